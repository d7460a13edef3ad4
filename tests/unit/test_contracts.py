from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from common.contracts import DataContract, DataFormat, Task, data_format_of, parse_contract

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


@pytest.mark.parametrize("path", sorted(CONTRACTS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_example_contract_parses(path: Path) -> None:
    contract = parse_contract(path.read_text())
    assert contract.model == path.stem
    assert contract.target not in contract.features


def test_features_are_the_columns_but_the_target() -> None:
    contract = parse_contract((CONTRACTS / "house-prices.yaml").read_text())
    assert contract.task is Task.regression
    assert contract.features == ["area_m2", "rooms", "year_built", "district", "heating"]


def test_the_hash_changes_with_any_rule() -> None:
    text = (CONTRACTS / "iris.yaml").read_text()
    assert parse_contract(text).content_hash == parse_contract(text).content_hash
    assert (
        parse_contract(text).content_hash != parse_contract(text.replace("max: 15", "max: 16")).content_hash
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("target: species", "target: colour"), "target 'colour' is not one of the columns"),
        (("task: classification", "task: clustering"), "task"),
        (("{type: numeric, min: 0, max: 15}", "{type: number}"), "sepal_length"),
        (("model: iris", "model: Iris_Flowers"), "lowercase"),
        (
            ("family: random_forest", "family: xgboots"),
            "unknown model family 'xgboots'; known: random_forest, ",
        ),
        (
            ("[setosa, versicolor, virginica]", "[no, yes]"),
            'quote each category, as in categories: \\["no", "yes"\\]',
        ),
        (("family: random_forest", "recipe: ../shared/recipe.py"), "relative to the contract file"),
        (("family: random_forest", "recipe: recipe.txt"), "must be a .py file"),
        (("family: random_forest", "family: lightgbm\n  recipe: mine.py"), "exclude each other"),
    ],
)
def test_a_bad_contract_is_refused_naming_what_is_wrong(change: tuple[str, str], message: str) -> None:
    text = (CONTRACTS / "iris.yaml").read_text().replace(*change, 1)
    with pytest.raises(ValidationError, match=message):
        parse_contract(text)


def test_a_recipe_replaces_the_family_and_survives_a_round_trip() -> None:
    """A bundle's manifest carries its contract as JSON, which serving validates again."""
    text = (CONTRACTS / "iris.yaml").read_text().replace("family: random_forest", "recipe: recipes/iris.py")
    contract = parse_contract(text)
    assert contract.training.recipe == "recipes/iris.py"
    assert DataContract.model_validate_json(contract.model_dump_json()) == contract


def test_every_error_of_a_contract_is_reported() -> None:
    """`[no, yes]` once hid the second of two errors behind the first."""
    text = (
        (CONTRACTS / "iris.yaml")
        .read_text()
        .replace("[setosa, versicolor, virginica]", "[no, yes]")
        .replace("family: random_forest", "family: xgboots")
    )
    with pytest.raises(ValidationError) as refused:
        parse_contract(text)
    messages = [error["msg"] for error in refused.value.errors()]
    assert len(messages) == 2
    assert any("quote each category" in message for message in messages)
    assert any("xgboots" in message for message in messages)


def test_a_regression_target_must_be_numeric() -> None:
    text = (CONTRACTS / "iris.yaml").read_text().replace("task: classification", "task: regression")
    with pytest.raises(ValidationError, match="regression target must be numeric"):
        parse_contract(text)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("m/a.csv", DataFormat.csv),
        ("m/a.CSV.GZ", DataFormat.csv_gz),
        ("m/a.parquet", DataFormat.parquet),
        ("m/a.txt", None),
        ("m/a.gz", None),
    ],
)
def test_the_format_comes_from_the_suffix(key: str, expected: DataFormat | None) -> None:
    assert data_format_of(key) == expected


def _with_training(**training: object) -> str:
    import yaml

    document = yaml.safe_load((CONTRACTS / "house-prices.yaml").read_text())
    document["training"] = {key: value for key, value in document["training"].items() if key != "direction"}
    document["training"].update(training)
    return yaml.safe_dump(document)


@pytest.mark.parametrize(
    ("metric", "direction"),
    [("rmse", "minimize"), ("mae", "minimize"), ("r2", "maximize")],
)
def test_a_left_out_direction_is_the_metrics_own(metric: str, direction: str) -> None:
    contract = parse_contract(_with_training(metric=metric))
    assert contract.training.direction == direction


def test_the_default_metric_is_maximized() -> None:
    from common.contracts import TrainingSettings

    assert TrainingSettings().direction == "maximize"
    assert TrainingSettings(metric="mae").direction == "minimize"


def test_a_direction_that_contradicts_the_metric_is_refused() -> None:
    with pytest.raises(
        ValidationError, match=r"training\.direction 'maximize' contradicts the metric 'rmse'"
    ):
        parse_contract(_with_training(metric="rmse", direction="maximize"))


def test_an_unknown_metric_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="unknown metric 'logloss'; known: accuracy, f1_macro, mae"):
        parse_contract(_with_training(metric="logloss"))


@pytest.mark.parametrize("field", ["floor", "promotion_margin"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(field: str) -> None:
    # NaN compares false with every score, so a NaN floor or margin would let any model through.
    with pytest.raises(ValidationError, match=field):
        parse_contract(_with_training(**{field: float("nan")}))
