"""`arrival upload --wait` follows the operator's file through the whole chain: a good file to a
promoted version (exit 0), a bad one to the quarantine (exit 4, naming the rule)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests import datasets
from tests.conftest import TRAINING_STACK
from tests.e2e.conftest import Chain

pytestmark = pytest.mark.e2e


def test_upload_wait_ends_promoted_or_quarantined(chain: Chain, unique: str, tmp_path: Path) -> None:
    # GIVEN a model of its own, so its first version need only clear the contract's floor
    model = f"cli-{unique}"
    chain.put_contract(model, datasets.contract_yaml("iris", model))
    good = tmp_path / "iris-good.csv"
    good.write_bytes(datasets.to_csv(datasets.iris_frame(150, seed=11)))
    frame = datasets.iris_frame(60, seed=12)
    frame.loc[5, "sepal_width"] = 42.0
    bad = tmp_path / "iris-bad.csv"
    bad.write_bytes(datasets.to_csv(frame))

    def upload_and_wait(path: Path) -> tuple[int, str]:
        result = CliRunner().invoke(
            app,
            [
                "upload",
                str(path),
                "--model",
                model,
                "--wait",
                "--timeout",
                "300",
                "--stack-name",
                TRAINING_STACK,
            ],
        )
        return result.exit_code, " ".join(result.output.split())  # the console wraps at spaces

    # WHEN the good file is uploaded and followed
    code, printed = upload_and_wait(good)

    # THEN every step is printed and a version trained on it is the champion
    assert code == 0, printed
    for step in ("ingest Lambda: valid against the contract", "trainer i-", "MLflow run", "gate: promoted"):
        assert step in printed
    assert chain.champion(model) is not None
    assert f"promoted: {model} version {chain.champion(model)} is the champion" in printed

    # WHEN the bad file is uploaded and followed
    code, printed = upload_and_wait(bad)

    # THEN it ends in the quarantine, the rule and its report named, and the champion untouched
    assert code == 4, printed
    assert "quarantined: rule out_of_range" in printed
    assert "sepal_width" in printed
    assert f"/{model}/iris-bad.csv.report.json" in printed
