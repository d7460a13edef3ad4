"""`arrival status` model by model, against moto: one model's problem is shown as that model's, and
never stops the report of the others."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import mlflow
import pytest
from moto import mock_aws

import common.ingest  # noqa: F401  # status imports it late; its tracer opens a socket at import
from cli import status
from common.adapters import s3, tracking
from common.bundles import ServingPointer, bundle_manifest_key, pointer_key
from common.champion import ROLLED_BACK

OUTPUTS = {
    "ConfigBucketName": "unit-config",
    "ProcessedBucketName": "unit-processed",
    "ModelsBucketName": "unit-models",
    "QuarantineBucketName": "unit-quarantine",
}


@pytest.fixture
def buckets(aws_credentials: None) -> Iterator[None]:
    s3.s3_client.cache_clear()
    with mock_aws():
        for bucket in OUTPUTS.values():
            boto3.client("s3").create_bucket(Bucket=bucket)
        yield
    s3.s3_client.cache_clear()


@pytest.mark.usefixtures("buckets")
@pytest.mark.parametrize(
    ("contract", "phrase"),
    [
        (b"model: broken\ntask: [classification\n", "while parsing a flow sequence"),
        (b"model: broken\ntask: clustering\n", "validation error"),
    ],
)
def test_a_broken_contract_is_its_models_problem_not_a_crash(contract: bytes, phrase: str) -> None:
    # GIVEN a model whose contract in the bucket no longer parses (an operator's typo)
    s3.put_bytes(OUTPUTS["ConfigBucketName"], "contracts/broken.yaml", contract)

    # WHEN its status is read
    report = status._model_status(
        "broken", OUTPUTS, None, None, ingest_dead_letters=0, training_dead_letters=0, registry_up=False
    )

    # THEN it says what is wrong with that contract and what to run
    assert report["contract"] is True and report["metric"] is None
    assert phrase in report["contract_error"]
    assert any(
        "the contract is not valid" in problem and "arrival contract put broken.yaml" in problem
        for problem in report["problems"]
    ), report["problems"]


@pytest.mark.usefixtures("buckets")
def test_a_malformed_pointer_is_a_problem_line_not_a_crash() -> None:
    s3.put_bytes(OUTPUTS["ModelsBucketName"], "pointers/iris.json", b'{"model": "iris"')

    report = status._model_status(
        "iris", OUTPUTS, None, None, ingest_dead_letters=0, training_dead_letters=0, registry_up=False
    )

    assert report["serving"]["pointer"] is None
    assert any(
        "pointers/iris.json is not a serving pointer" in problem
        and "arrival rollback --model iris --to <version>" in problem
        for problem in report["problems"]
    ), report["problems"]


def _registry(tmp_path: Path, versions: int, champion: str, **tags: dict[str, str]) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client.cache_clear()
    client = tracking.client()
    client.create_registered_model("iris")
    run = client.create_run(client.create_experiment("iris"))
    for number in range(1, versions + 1):
        found = tags.get(str(number), {"rejected": "worse"})
        client.create_model_version("iris", str(tmp_path), run_id=run.info.run_id, tags=found)
    tracking.move_champion("iris", champion)


@pytest.fixture
def registry_uri() -> Iterator[None]:
    yield
    tracking.client.cache_clear()
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


@pytest.mark.usefixtures("buckets", "registry_uri")
def test_the_champion_comes_from_its_alias_even_older_than_the_versions_shown(tmp_path: Path) -> None:
    # GIVEN a champion followed by more rejected versions than status shows
    _registry(tmp_path, status.VERSIONS_SHOWN + 2, "1", **{"1": {"promotion": "first"}})
    _pointer_to("1")

    report = status._model_status(
        "iris", OUTPUTS, None, None, ingest_dead_letters=0, training_dead_letters=0, registry_up=True
    )

    assert report["champion"] == "1"
    assert not any("disagree" in problem for problem in report["problems"]), report["problems"]


@pytest.mark.usefixtures("buckets", "registry_uri")
def test_a_version_rolled_back_away_from_is_marked(tmp_path: Path) -> None:
    marks = {
        "1": {"promotion": "first", "rollback": "rolled back from version 2 by carol"},
        "2": {"promotion": "better", ROLLED_BACK: "rolled back to version 1 (pointer generation 3)"},
    }
    _registry(tmp_path, 2, "1", **marks)
    _pointer_to("1")

    report = status._model_status(
        "iris", OUTPUTS, None, None, ingest_dead_letters=0, training_dead_letters=0, registry_up=True
    )

    decisions = {
        version["version"]: (version["decision"], version["reason"]) for version in report["versions"]
    }
    assert decisions == {
        "2": ("promoted, rolled back", "rolled back to version 1 (pointer generation 3)"),
        "1": ("promoted", "first"),
    }


@pytest.mark.usefixtures("buckets")
def test_the_servers_own_reason_for_a_version_it_has_not_loaded_is_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pointer_to("2")
    pending = {"version": "2", "cause": "refused", "reason": "its check rows disagree", "failures": 1,
               "next_try": "when its pointer changes"}  # fmt: skip
    monkeypatch.setattr(status, "_served_version", lambda api, key, model: ("1", pending))

    report = status._model_status(
        "iris",
        OUTPUTS,
        "http://api",
        "key",
        ingest_dead_letters=0,
        training_dead_letters=0,
        registry_up=False,
    )

    assert report["serving"]["pending"] == pending
    assert (
        "the API still answers with version 1, not 2: refused, its check rows disagree "
        "(next try: when its pointer changes)"
    ) in report["problems"]
    assert not any("within seconds" in problem for problem in report["problems"])


def _pointer_to(version: str) -> None:
    pointer = ServingPointer(
        model="iris", version=version, manifest_key=bundle_manifest_key("iris", version), promoted_at="t"
    )
    s3.put_bytes(OUTPUTS["ModelsBucketName"], pointer_key("iris"), pointer.model_dump_json().encode())


def test_a_recipes_dead_letter_shows_where_in_the_recipe_it_raised() -> None:
    reason = (
        "StageFailedError: stage train: recipe: fitting the recipe's pipeline raised ValueError: no rooms\n"
        + "".join(
            f'  File "/opt/arrival/lib/sklearn/frame{index}.py", line {index}, in fit\n' for index in range(9)
        )
        + '  File "recipes/houses.py", line 9, in fit\n    raise ValueError("no rooms")\nValueError: no rooms'
    )
    line = status._failure_in_brief(reason)

    assert "\n" not in line
    assert line.startswith("StageFailedError: stage train: recipe: fitting the recipe's pipeline raised")
    assert (
        'File "recipes/houses.py", line 9, in fit | raise ValueError("no rooms") | ValueError: no rooms'
        in line
    )


def test_each_trainer_is_shown_with_the_model_it_trains_or_as_idle() -> None:
    from rich.console import Console

    from cli.status_view import print_stack

    console = Console(record=True, width=100)
    print_stack(
        console,
        {
            "stack": "unit",
            "queues": {},
            "release": None,
            "trainers": [
                {"instance_id": "i-1", "running_seconds": 5, "release": None, "training": "churn"},
                {"instance_id": "i-2", "running_seconds": 9, "release": None, "training": None},
            ],
            "server": None,
            "models": [],
        },
    )
    printed = console.export_text()
    assert "i-1 (" in printed and "training churn)" in printed
    assert "i-2 (" in printed and "idle)" in printed


def test_trainers_say_how_long_they_have_been_up() -> None:
    from rich.console import Console

    from cli.status_view import print_stack

    console = Console(record=True, width=100)
    trainer = {"instance_id": "i-1", "running_seconds": 39, "release": None, "training": None}
    print_stack(
        console,
        {"stack": "unit", "queues": {}, "release": None, "trainers": [trainer], "server": None, "models": []},
    )
    assert "i-1 (up 39 s," in console.export_text()


def test_off_a_terminal_long_values_stay_whole_and_tables_are_not_squeezed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.output import make_console
    from cli.status_view import _versions_table

    # GIVEN output that is not a terminal (captured), with no COLUMNS
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()
    reason = "f1_macro 0.81 does not beat the champion's 0.83: " + "a long explanation " * 8
    key = "s3://arrival-processed-000000000000/" + "/".join(["a-very-long-prefix"] * 8) + "/data.parquet"
    model = {
        "metric": "f1_macro",
        "versions": [
            {
                "version": "2",
                "aliases": [],
                "metric": {"f1_macro": 0.81},
                "decision": "rejected",
                "reason": reason,
                "drift": "drifted",
                "drifted_columns": [f"feature_{index}" for index in range(12)],
            }
        ],
    }

    # WHEN a long key and the versions table are printed
    console.print(f"stored at {key}")
    console.print(_versions_table(model))

    # THEN each is whole on its line: copyable, and the reason not cut
    lines = capsys.readouterr().out.splitlines()
    assert f"stored at {key}" in lines
    row = next(line for line in lines if line.strip().startswith("2"))
    assert reason.strip() in row and "feature_11" in row
