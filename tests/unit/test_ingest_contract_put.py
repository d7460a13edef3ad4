"""`arrival contract put` refuses a contract whose file name and declared model disagree: the file
name is the model operators upload data under, and ingest looks the contract up by it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from tests import datasets


def test_a_contract_whose_name_is_not_its_model_is_refused(tmp_path: Path) -> None:
    # GIVEN foo.yaml that declares model iris
    contract = tmp_path / "foo.yaml"
    contract.write_bytes(datasets.contract_yaml("iris", "iris"))

    # WHEN it is put (no stack exists: the refusal must come before any AWS call)
    result = CliRunner().invoke(app, ["contract", "put", str(contract), "--stack-name", "nowhere"])

    # THEN it fails with one line naming both names
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "'foo'" in lines[0]
    assert "'iris'" in lines[0]
