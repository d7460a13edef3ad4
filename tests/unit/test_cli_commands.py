"""The operator's commands (`upload`, `contract get|list|check`) in-process against moto: what they
print, their exit codes, and a one-line error for each way they can go wrong. The ingest stack is the
one tests/unit/test_handle_ingest.py builds; `upload --wait` runs the real ingest function on each
upload, so the report it prints is the one the quarantine wrote."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from typer.testing import CliRunner, Result

from cli import follow, operations
from cli.main import app
from common.adapters import s3, tracking
from handlers import handle_ingest
from tests import datasets
from tests.unit.conftest import FakeLambdaContext
from tests.unit.test_handle_ingest import RAW, FakeStack, stack  # noqa: F401  # the moto stack fixture

STACK = "unit"
REAL_API_CALL = BaseClient._make_api_call  # type: ignore[attr-defined]  # private: botocore-stubs omit it
OUTPUTS = {
    "RawBucketName": RAW,
    "ProcessedBucketName": "unit-processed",
    "QuarantineBucketName": "unit-quarantine",
    "ConfigBucketName": "unit-config",
    "TrainingQueueUrl": "https://sqs.us-east-1.amazonaws.com/000000000000/training.fifo",
}


def _describe_stacks(stack_name: str) -> dict[str, str]:
    """CloudFormation as moto would answer it (moto's own needs extras this project does not install)."""
    if stack_name != STACK:
        raise ClientError(
            {"Error": {"Code": "ValidationError", "Message": f"Stack with id {stack_name} does not exist"}},
            "DescribeStacks",
        )
    return OUTPUTS


def _point_the_cli_at_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    # An endpoint set on purpose passes cli/target.py's check; botocore is then told to ignore it, so
    # every call goes to AWS's own endpoints, which moto intercepts (and sockets stay closed).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.delenv("ARRIVAL_TARGET", raising=False)
    monkeypatch.setattr(operations, "stack_outputs", _describe_stacks)
    s3.s3_client.cache_clear()


@pytest.fixture
def cloud(stack: FakeStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStack]:  # noqa: F811
    _point_the_cli_at_moto(monkeypatch)
    stack.s3.put_object(
        Bucket="unit-config",
        Key="contracts/house-prices.yaml",
        Body=(datasets.CONTRACTS / "house-prices.yaml").read_bytes(),
    )
    yield stack
    s3.s3_client.cache_clear()


def _arrival(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _one_line_error(result: Result, *phrases: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase in lines[0]


def _iris_csv(tmp_path: Path, name: str = "iris-2026-11.csv", rows: int = 50, seed: int = 0) -> Path:
    path = tmp_path / name
    path.write_bytes(datasets.to_csv(datasets.iris_frame(rows, seed)))
    return path


def _out_of_range_csv(tmp_path: Path) -> Path:
    frame = datasets.iris_frame(50)
    frame.loc[3, "petal_length"] = 99.0
    path = tmp_path / "too-long-petals.csv"
    path.write_bytes(datasets.to_csv(frame))
    return path


# --- contract get / list ------------------------------------------------------------------------------


def test_contract_get_prints_the_stacks_yaml(cloud: FakeStack) -> None:
    result = _arrival("contract", "get", "iris", "--stack-name", STACK)

    assert result.exit_code == 0, result.output
    assert result.output == datasets.contract_yaml("iris", "iris").decode()


def test_contract_get_of_a_model_without_one_names_those_with_one(cloud: FakeStack) -> None:
    result = _arrival("contract", "get", "tulips", "--stack-name", STACK)

    _one_line_error(result, "no contract for model 'tulips'", "house-prices, iris", "arrival contract put")


def test_contract_list_gives_one_model_a_line_or_json(cloud: FakeStack) -> None:
    plain = _arrival("contract", "list", "--stack-name", STACK)
    as_json = _arrival("contract", "list", "--json", "--stack-name", STACK)

    assert plain.exit_code == 0, plain.output
    assert plain.output == "house-prices\niris\n"
    assert json.loads(as_json.output) == ["house-prices", "iris"]


def test_contract_delete_removes_the_contract_and_is_safe_to_run_twice(cloud: FakeStack) -> None:
    # GIVEN a model with a contract and a recipe in the stack
    cloud.s3.put_object(Bucket="unit-config", Key="recipes/iris.py", Body=b"def build_pipeline(params): ...")

    # WHEN its contract is deleted, twice
    first = _arrival("contract", "delete", "iris", "--stack-name", STACK)
    second = _arrival("contract", "delete", "iris", "--stack-name", STACK)

    # THEN the first removes both and says what now happens to its files; the second finds nothing
    assert first.exit_code == 0, first.output
    assert "deleted s3://unit-config/contracts/iris.yaml" in first.output
    assert "deleted s3://unit-config/recipes/iris.py" in first.output
    assert "quarantined (no_contract)" in first.output
    assert second.exit_code == 0, second.output
    assert "nothing to delete" in second.output
    assert _arrival("contract", "list", "--stack-name", STACK).output == "house-prices\n"


@pytest.mark.parametrize(
    "command",
    [["contract", "get", "iris"], ["contract", "list"], ["contract", "check", "x.csv", "--contract", "iris"]],
)
def test_without_the_stack_a_command_says_to_deploy(
    command: list[str], cloud: FakeStack, tmp_path: Path
) -> None:
    if command[1] == "check":
        command[2] = str(_iris_csv(tmp_path))
    result = _arrival(*command, "--stack-name", "arrival-gone")

    _one_line_error(result, "no stack named arrival-gone: run `arrival deploy`")


def test_upload_without_the_stack_says_to_deploy(cloud: FakeStack, tmp_path: Path) -> None:
    result = _arrival("upload", str(_iris_csv(tmp_path)), "--model", "iris", "--stack-name", "nope")

    _one_line_error(result, "no stack named nope: run `arrival deploy`")


# --- contract check -----------------------------------------------------------------------------------


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A local contract, and a CLI for which any AWS call fails the test."""
    _point_the_cli_at_moto(monkeypatch)

    def forbidden(*_: Any) -> Any:
        raise AssertionError("contract check with a local contract called AWS")

    monkeypatch.setattr(operations, "stack_outputs", forbidden)
    monkeypatch.setattr(BaseClient, "_make_api_call", forbidden)
    contract = tmp_path / "iris.yaml"
    contract.write_bytes(datasets.contract_yaml("iris", "iris"))
    return contract


def test_a_good_file_checks_clean_against_a_local_contract(no_aws: Path, tmp_path: Path) -> None:
    result = _arrival("contract", "check", str(_iris_csv(tmp_path)), "--contract", str(no_aws))

    assert result.exit_code == 0, result.output
    assert "would be accepted for model iris" in result.output


def _report_in(output: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(output[output.index("\n{") + 1 :])
    return report


def test_a_bad_file_gets_exit_4_and_the_report_the_quarantine_writes(
    stack: FakeStack,  # noqa: F811
    lambda_context: FakeLambdaContext,
    no_aws: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a file with one petal 99 cm long
    bad = _out_of_range_csv(tmp_path)

    # WHEN it is checked locally
    result = _arrival("contract", "check", str(bad), "--contract", str(no_aws))

    # THEN exit 4, the rule named, and the report ingest would write
    assert result.exit_code == 4, result.output
    assert "quarantined: rule out_of_range" in result.output
    local = _report_in(result.output)
    assert local["rule"] == "out_of_range"
    assert local["violations"][0]["columns"] == ["petal_length"]
    assert local["violations"][0]["examples"] == ["99.0"]

    # AND it is the very report the ingest function writes when the same file lands in the bucket
    monkeypatch.setattr(BaseClient, "_make_api_call", REAL_API_CALL)  # for the ingest function
    version = stack.s3.put_object(Bucket=RAW, Key=f"iris/{bad.name}", Body=bad.read_bytes())["VersionId"]
    handle_ingest.handler(stack.event_for(f"iris/{bad.name}", version), lambda_context)
    written = json.loads(
        stack.s3.get_object(Bucket="unit-quarantine", Key=f"iris/{bad.name}.report.json")["Body"].read()
    )
    assert written.keys() == local.keys()
    for field in ("quarantine_key", "size", "model", "rule", "violations", "contract_hash"):
        assert written[field] == local[field], field
    assert written["source"]["key"] == local["source"]["key"]
    assert written["source"]["etag"] == local["source"]["etag"]


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        (b"", "empty_file"),
        (b"sepal_length,sepal_width,petal_length,petal_width,species\n", "header_only"),
        (b"a,b\n1,2\n", "missing_columns"),
    ],
)
def test_each_rule_is_named(no_aws: Path, tmp_path: Path, body: bytes, rule: str) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes(body)

    result = _arrival("contract", "check", str(data), "--contract", str(no_aws))

    assert result.exit_code == 4, result.output
    assert _report_in(result.output)["rule"] == rule


def test_the_files_own_text_is_shown_as_it_is_never_as_markup(no_aws: Path, tmp_path: Path) -> None:
    frame = datasets.iris_frame(50)
    frame.loc[0, "species"] = "[bold]tulip"
    data = tmp_path / "data.csv"
    data.write_bytes(datasets.to_csv(frame))

    result = _arrival("contract", "check", str(data), "--contract", str(no_aws))

    assert result.exit_code == 4, result.output
    assert "quarantined: rule unknown_category" in result.output
    assert "e.g. [bold]tulip" in result.output


def test_a_file_of_another_type_is_an_unsupported_format(no_aws: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.xlsx"
    data.write_bytes(b"PK")

    result = _arrival("contract", "check", str(data), "--contract", str(no_aws))

    assert result.exit_code == 4, result.output
    assert _report_in(result.output)["rule"] == "unsupported_format"


def test_check_against_a_model_of_the_stack(cloud: FakeStack, tmp_path: Path) -> None:
    good = _arrival(
        "contract", "check", str(_iris_csv(tmp_path)), "--contract", "iris", "--stack-name", STACK
    )
    bad = _arrival(
        "contract", "check", str(_out_of_range_csv(tmp_path)), "--contract", "iris", "--stack-name", STACK
    )

    assert good.exit_code == 0, good.output
    assert bad.exit_code == 4, bad.output


def test_check_against_a_model_without_a_contract(cloud: FakeStack, tmp_path: Path) -> None:
    result = _arrival(
        "contract", "check", str(_iris_csv(tmp_path)), "--contract", "tulips", "--stack-name", STACK
    )

    _one_line_error(result, "no contract for model 'tulips'")


def test_a_contract_that_is_not_yaml_is_one_line(no_aws: Path, tmp_path: Path) -> None:
    no_aws.write_bytes(b"model: [broken")

    result = _arrival("contract", "check", str(_iris_csv(tmp_path)), "--contract", str(no_aws))

    _one_line_error(result, str(no_aws), "is not valid YAML", "fix it")


def test_an_invalid_contract_lists_every_problem_a_line_each(no_aws: Path, tmp_path: Path) -> None:
    """Unquoted `[no, yes]` once hid the second of two errors: "2 validation errors", one shown."""
    text = (datasets.CONTRACTS / "iris.yaml").read_bytes()
    no_aws.write_bytes(
        text.replace(b"[setosa, versicolor, virginica]", b"[no, yes]").replace(b"random_forest", b"xgboots")
    )

    result = _arrival("contract", "check", str(_iris_csv(tmp_path)), "--contract", str(no_aws))

    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert "is not a valid contract, 2 problem(s):" in lines[0]
    assert lines[1].startswith("  columns.species.type=categorical.categories: ") or "categories" in lines[1]
    assert 'quote each category, as in categories: ["no", "yes"]' in result.output
    assert "unknown model family 'xgboots'; known: random_forest, gradient_boosting" in result.output


def test_a_missing_data_or_contract_file_is_one_line(no_aws: Path, tmp_path: Path) -> None:
    no_data = _arrival("contract", "check", str(tmp_path / "absent.csv"), "--contract", str(no_aws))
    no_contract = _arrival(
        "contract", "check", str(_iris_csv(tmp_path)), "--contract", str(tmp_path / "absent.yaml")
    )

    _one_line_error(no_data, "no such data file", "absent.csv")
    _one_line_error(no_contract, "no such contract file", "absent.yaml")


# --- recipes ------------------------------------------------------------------------------------------

SERVABLE_RECIPE = """
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures


def build_pipeline(params):
    columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    squares = ColumnTransformer([("squares", PolynomialFeatures(degree=2), columns)])
    estimator = LogisticRegression(max_iter=params.get("max_iter", 500))
    return Pipeline([("features", squares), ("estimator", estimator)])
"""


def _with_recipe(contract: Path, source: str) -> Path:
    contract.write_bytes(contract.read_bytes().replace(b"family: random_forest", b"recipe: iris_recipe.py"))
    (contract.parent / "iris_recipe.py").write_text(source)
    return contract


def test_check_fits_a_local_contracts_recipe_and_says_it_would_serve(no_aws: Path, tmp_path: Path) -> None:
    _with_recipe(no_aws, SERVABLE_RECIPE)

    result = _arrival("contract", "check", str(_iris_csv(tmp_path, rows=150)), "--contract", str(no_aws))

    assert result.exit_code == 0, result.output
    assert "the recipe iris_recipe.py fitted on" in result.output and "f1_macro" in result.output
    assert "servable: its ONNX export gives the pipeline's answers" in result.output


def test_check_exits_3_for_a_recipe_that_would_not_serve_naming_why(no_aws: Path, tmp_path: Path) -> None:
    _with_recipe(
        no_aws,
        SERVABLE_RECIPE.replace("PolynomialFeatures(degree=2)", "FunctionTransformer(abs)").replace(
            "import PolynomialFeatures", "import FunctionTransformer"
        ),
    )

    result = _arrival("contract", "check", str(_iris_csv(tmp_path, rows=150)), "--contract", str(no_aws))

    assert result.exit_code == 3, result.output
    assert "not servable: the pipeline does not convert to ONNX" in result.output
    assert "FunctionTransformer" in result.output


@pytest.mark.parametrize(
    ("source", "phrase"),
    [
        ("def build(params):\n    pass\n", "defines no build_pipeline(params) function"),
        ("import not_installed_anywhere\n", "ModuleNotFoundError"),
    ],
)
def test_check_refuses_a_recipe_the_trainer_could_not_use(
    no_aws: Path, tmp_path: Path, source: str, phrase: str
) -> None:
    _with_recipe(no_aws, source)

    result = _arrival("contract", "check", str(_iris_csv(tmp_path)), "--contract", str(no_aws))

    assert result.exit_code == 1, result.output
    assert "cannot be used" in result.output and phrase in result.output


def test_put_uploads_the_recipe_first_and_a_changed_one_queues_a_training(
    cloud: FakeStack, tmp_path: Path
) -> None:
    contract = tmp_path / "iris.yaml"
    contract.write_bytes(datasets.contract_yaml("iris", "iris"))
    _with_recipe(contract, SERVABLE_RECIPE)

    first = _arrival("contract", "put", str(contract), "--stack-name", STACK)

    assert first.exit_code == 0, first.output
    assert "recipe uploaded to s3://unit-config/recipes/iris.py" in first.output
    assert "queued" not in first.output  # the model has no data yet
    stored = cloud.s3.get_object(Bucket="unit-config", Key="recipes/iris.py")["Body"].read()
    assert stored == SERVABLE_RECIPE.encode()

    # WHEN the model has data and only the recipe changes
    accepted = {"model": "iris", "datasets": [{"content_hash": "a" * 64}]}
    cloud.s3.put_object(Bucket="unit-processed", Key="iris/accepted.json", Body=json.dumps(accepted))
    again = _arrival("contract", "put", str(contract), "--stack-name", STACK)
    assert "queued" not in again.output  # the same recipe: nothing new to train
    _with_recipe(contract, SERVABLE_RECIPE.replace("500", "800"))
    changed = _arrival("contract", "put", str(contract), "--stack-name", STACK)

    assert "a training on the model's data is queued" in changed.output, changed.output
    jobs = cloud.sqs.receive_message(QueueUrl=OUTPUTS["TrainingQueueUrl"], MaxNumberOfMessages=10)["Messages"]
    assert [json.loads(job["Body"]) for job in jobs] == [{"model": "iris"}]


def test_check_against_a_model_of_the_stack_fits_the_recipe_the_stack_holds(
    cloud: FakeStack, tmp_path: Path
) -> None:
    contract = tmp_path / "iris.yaml"
    contract.write_bytes(datasets.contract_yaml("iris", "iris"))
    _with_recipe(contract, SERVABLE_RECIPE)
    assert _arrival("contract", "put", str(contract), "--stack-name", STACK).exit_code == 0
    (tmp_path / "iris_recipe.py").unlink()  # only the stack's copy is left

    result = _arrival(
        "contract", "check", str(_iris_csv(tmp_path, rows=150)), "--contract", "iris", "--stack-name", STACK
    )

    assert result.exit_code == 0, result.output
    assert "the recipe iris_recipe.py fitted on" in result.output and "servable" in result.output


def test_put_refuses_a_contract_naming_a_recipe_that_is_not_there(cloud: FakeStack, tmp_path: Path) -> None:
    contract = tmp_path / "iris.yaml"
    contract.write_bytes(
        datasets.contract_yaml("iris", "iris").replace(b"family: random_forest", b"recipe: gone.py")
    )

    result = _arrival("contract", "put", str(contract), "--stack-name", STACK)

    _one_line_error(result, "names the recipe gone.py, but there is no file")
    assert "Contents" not in cloud.s3.list_objects_v2(Bucket="unit-config", Prefix="recipes/")


# --- upload -------------------------------------------------------------------------------------------


def test_upload_puts_the_file_under_its_model_and_prints_key_and_version(
    cloud: FakeStack, tmp_path: Path
) -> None:
    data = _iris_csv(tmp_path)

    result = _arrival("upload", str(data), "--model", "iris", "--stack-name", STACK)

    assert result.exit_code == 0, result.output
    versions = cloud.s3.list_object_versions(Bucket=RAW, Prefix="iris/")["Versions"]
    assert [(v["Key"], v["IsLatest"]) for v in versions] == [(f"iris/{data.name}", True)]
    assert f"s3://{RAW}/iris/{data.name} (version {versions[0]['VersionId']})" in result.output
    stored = cloud.s3.get_object(Bucket=RAW, Key=f"iris/{data.name}")
    assert stored["Body"].read() == data.read_bytes()
    assert stored["ContentType"] == "text/csv"


def test_upload_of_a_missing_file_is_one_line(cloud: FakeStack, tmp_path: Path) -> None:
    result = _arrival("upload", str(tmp_path / "absent.csv"), "--model", "iris", "--stack-name", STACK)

    _one_line_error(result, "no such data file", "absent.csv")


def test_upload_of_an_unreadable_file_is_one_line(
    cloud: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _iris_csv(tmp_path)

    readable = Path.read_bytes

    def refused(path: Path) -> bytes:
        if path == data:
            raise PermissionError(13, "Permission denied")
        return readable(path)

    monkeypatch.setattr(Path, "read_bytes", refused)  # the tests run as root, for whom chmod is no bar
    result = _arrival("upload", str(data), "--model", "iris", "--stack-name", STACK)

    _one_line_error(result, f"cannot read {data}", "Permission denied", "permissions")


def test_upload_for_a_model_without_a_contract_uploads_nothing(cloud: FakeStack, tmp_path: Path) -> None:
    result = _arrival("upload", str(_iris_csv(tmp_path)), "--model", "tulips", "--stack-name", STACK)

    _one_line_error(result, "no contract for model 'tulips'", "arrival contract put tulips.yaml")
    assert "Versions" not in cloud.s3.list_object_versions(Bucket=RAW)


# --- upload --wait, with the real ingest function run on each upload -----------------------------------


@pytest.fixture
def ingest_on_upload(
    cloud: FakeStack, lambda_context: FakeLambdaContext, monkeypatch: pytest.MonkeyPatch
) -> FakeStack:
    """S3 delivers each upload's event to the ingest function at once."""
    put = s3.put_bytes

    def put_and_ingest(bucket: str, key: str, body: bytes, content_type: str = "") -> str | None:
        version = put(bucket, key, body, content_type)
        if bucket == RAW:
            handle_ingest.handler(cloud.event_for(key, version), lambda_context)
        return version

    monkeypatch.setattr(s3, "put_bytes", put_and_ingest)
    return cloud


def _gate(monkeypatch: pytest.MonkeyPatch, decision: str, reason: str) -> None:
    """A trainer and the registry as MLflow would answer once the gate decided on the upload."""
    monkeypatch.setattr(follow.Follower, "trainer", lambda _: "i-0123456789")
    monkeypatch.setattr(tracking, "run_with_source", lambda *_: tracking.RunState("run-1", "FINISHED"))
    seen: list[str] = []

    def decided(model: str, source: str) -> tracking.ModelVersion:
        seen.append(source)
        return tracking.ModelVersion(model, "7", "run-1", {decision: reason})

    monkeypatch.setattr(tracking, "decided_version_with_source", decided)


def _wait(path: Path, *extra: str) -> Result:
    return _arrival("upload", str(path), "--model", "iris", "--wait", "--stack-name", STACK, *extra)


def test_wait_exits_0_when_a_version_trained_on_the_file_is_promoted(
    ingest_on_upload: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gate(monkeypatch, "promotion", "first model: f1_macro 0.97 clears the floor 0.6")

    result = _wait(_iris_csv(tmp_path))

    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    for step in (
        "ingest Lambda: valid against the contract; 50 rows",
        "trainer i-0123456789",
        "MLflow run run-1",
    ):
        assert step in printed
    assert "version 7 registered; gate: promoted" in printed
    assert "promoted: iris version 7 is the champion" in printed


def test_wait_exits_3_with_the_gates_reason_when_rejected(
    ingest_on_upload: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gate(monkeypatch, "rejected", "f1_macro 0.91 does not beat the champion's 0.97 by 0.005")

    result = _wait(_iris_csv(tmp_path))

    assert result.exit_code == 3, result.output
    assert (
        "rejected: version 7 was not promoted (the champion stays): f1_macro 0.91 does not beat"
        in " ".join(result.output.split())
    )


def test_wait_exits_5_naming_the_command_when_the_version_awaits_approval(
    ingest_on_upload: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A contract with `training.approval: manual`: the version passed the gate and waits for a person.
    _gate(monkeypatch, "awaiting_approval", "f1_macro 0.98 beats champion 0.97 by 0.01")

    result = _wait(_iris_csv(tmp_path))

    assert result.exit_code == 5, result.output
    printed = " ".join(result.output.split())
    assert "gate: awaiting approval: f1_macro 0.98 beats champion" in printed
    assert "`arrival approve --model iris --version 7` promotes it" in printed


def test_wait_exits_4_naming_the_rule_violations_and_report(
    ingest_on_upload: FakeStack, tmp_path: Path
) -> None:
    bad = _out_of_range_csv(tmp_path)

    result = _wait(bad)

    assert result.exit_code == 4, result.output
    printed = " ".join(result.output.split())
    assert "quarantined: rule out_of_range" in printed
    assert "values outside the contract's range in petal_length (1 rows)" in printed
    assert f"report: s3://unit-quarantine/iris/{bad.name}.report.json" in printed


def test_wait_exits_1_on_a_duplicate_naming_the_accepted_copy(
    ingest_on_upload: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _iris_csv(tmp_path, "first.csv")
    assert _arrival("upload", str(first), "--model", "iris", "--stack-name", STACK).exit_code == 0
    copy = tmp_path / "copy.csv"
    copy.write_bytes(first.read_bytes())

    result = _wait(copy)

    assert result.exit_code == 1, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error: the same bytes were already accepted as ")
    assert f"s3://{RAW}/iris/first.csv?versionId=" in " ".join(result.output.split())


def test_wait_exits_1_on_timeout_in_one_line(
    cloud: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No ingest runs: the file is never judged.
    result = _wait(_iris_csv(tmp_path), "--timeout", "0")

    assert result.exit_code == 1, result.output
    assert (
        result.output.strip().splitlines()[-1].startswith("error: ingest did not happen in time within 0 s")
    )


def test_wait_exits_1_with_the_reason_when_the_training_job_is_dead_lettered(
    ingest_on_upload: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a trainer that fails the upload's job for good: the worker dead-letters it with a reason
    dead_letters = ingest_on_upload.sqs.create_queue(
        QueueName="training-dlq.fifo", Attributes={"FifoQueue": "true"}
    )["QueueUrl"]
    monkeypatch.setitem(OUTPUTS, "TrainingDeadLetterQueueUrl", dead_letters)
    monkeypatch.setattr(tracking, "run_with_source", lambda *_: None)

    def trainer_fails(_: follow.Follower) -> None:
        ingest_on_upload.sqs.send_message(
            QueueUrl=dead_letters,
            MessageBody=json.dumps({"model": "iris"}),
            MessageGroupId="iris",
            MessageDeduplicationId="job-1",
            MessageAttributes={
                "failure_reason": {"DataType": "String", "StringValue": "ValueError: no rows left"}
            },
        )

    monkeypatch.setattr(follow.Follower, "trainer", trainer_fails)

    # WHEN the upload is followed
    result = _wait(_iris_csv(tmp_path), "--timeout", "60")

    # THEN it ends at once, in one line naming the reason and what to do
    assert result.exit_code == 1, result.output
    last = " ".join(result.output.strip().splitlines()[-1:])
    assert last.startswith("error: training iris on it failed and its job was dead-lettered")
    assert "ValueError: no rows left" in last
    assert "`arrival logs trainer`" in last


def test_wait_pins_the_uploaded_object_version(
    ingest_on_upload: FakeStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    _gate(monkeypatch, "promotion", "ok")
    decided: Callable[[str, str], tracking.ModelVersion | None] = tracking.decided_version_with_source

    def recording(model: str, source: str) -> tracking.ModelVersion | None:
        asked.append(source)
        return decided(model, source)

    monkeypatch.setattr(tracking, "decided_version_with_source", recording)

    result = _wait(_iris_csv(tmp_path))

    version = ingest_on_upload.s3.head_object(Bucket=RAW, Key="iris/iris-2026-11.csv")["VersionId"]
    assert result.exit_code == 0, result.output
    assert asked == [f"s3://{RAW}/iris/iris-2026-11.csv?versionId={version}"]


# --- Unknown models, versions and stages: one line each ----------------------------------------------


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (SQLite) registry with model iris, versions 1 and 2, version 2 the champion: made once,
    since MLflow's migrations take seconds, and copied for each test."""
    path = tmp_path_factory.mktemp("registry") / "mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
        tracking.client.cache_clear()
        client = tracking.client()
        client.create_registered_model("iris")
        for _ in range(2):
            client.create_model_version("iris", str(path.parent))
        tracking.move_champion("iris", "2")
        tracking.client.cache_clear()
    return path


@pytest.fixture
def registry(
    cloud: FakeStack, registry_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    copy = tmp_path / "mlflow.db"
    copy.write_bytes(registry_file.read_bytes())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{copy}")
    monkeypatch.setitem(OUTPUTS, "DvcRemoteUrl", "s3://unit-processed/_arrival/dvc")
    monkeypatch.setitem(OUTPUTS, "ModelsBucketName", "unit-models")
    monkeypatch.setitem(OUTPUTS, "EventBusName", "unit-bus")
    s3.s3_client().create_bucket(Bucket="unit-models")
    tracking.client.cache_clear()
    yield
    tracking.client.cache_clear()


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["rollback", "--model", "roses"], ["model 'roses' has no champion to roll back from"]),
        (
            ["rollback", "--model", "iris", "--to", "9"],
            ["model 'iris' has no version 9 (its versions: 1, 2)"],
        ),
        (
            ["reproduce", "7", "--model", "iris"],
            ["model 'iris' has no version or alias '7'", "versions 1 to 2"],
        ),
        (["reproduce", "champion", "--model", "roses"], ["model 'roses' has no versions", "iris"]),
        (
            ["redrive", "billing"],
            ["unknown stage 'billing'; redrive one of: ingest, training, batch, notify"],
        ),
    ],
)
@pytest.mark.usefixtures("registry")
def test_an_unknown_model_version_or_stage_is_one_line(args: list[str], phrases: list[str]) -> None:
    _one_line_error(_arrival(*args, "--stack-name", STACK), *phrases)
