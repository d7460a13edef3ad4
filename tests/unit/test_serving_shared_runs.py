"""Requests that arrive in the same turn of the event loop share one ONNX run, and only that."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import numpy as np
import pytest

from common.bundle_loader import Predictions
from serving.bundle import LoadedModel
from serving.shared_runs import SharedRuns


class CountingModel:
    """Predicts each row's `x` doubled, and counts its runs; a row with `fail` breaks the run."""

    def __init__(self) -> None:
        self.runs: list[int] = []

    def predict(self, records: list[dict[str, Any]]) -> Predictions:
        self.runs.append(len(records))
        if any(record.get("fail") for record in records):
            raise RuntimeError("broken row")
        values = np.array([record["x"] * 2.0 for record in records], dtype=np.float32)
        return Predictions(values, np.column_stack([values, -values]))


def _loaded(model: CountingModel) -> LoadedModel:
    """SharedRuns only calls the model's predict(): the counting model stands in for a loaded bundle."""
    return cast(LoadedModel, model)


async def _together(
    shared: SharedRuns, model: CountingModel, requests: list[list[dict[str, Any]]]
) -> list[Any]:
    return await asyncio.gather(
        *(shared.predict(_loaded(model), records) for records in requests), return_exceptions=True
    )


def test_requests_of_the_same_turn_share_one_run_and_get_their_own_rows() -> None:
    model, shared = CountingModel(), SharedRuns()

    answers = asyncio.run(_together(shared, model, [[{"x": 1}], [{"x": 2}, {"x": 3}], [{"x": 4}]]))

    assert model.runs == [4]
    assert [answer.values.tolist() for answer in answers] == [[2.0], [4.0, 6.0], [8.0]]
    assert answers[1].probabilities.tolist() == [[4.0, -4.0], [6.0, -6.0]]


def test_requests_of_later_turns_get_runs_of_their_own() -> None:
    model, shared = CountingModel(), SharedRuns()

    async def one_after_another() -> None:
        for x in range(3):
            await shared.predict(_loaded(model), [{"x": x}])

    asyncio.run(one_after_another())

    assert model.runs == [1, 1, 1]


def test_a_failing_request_fails_alone() -> None:
    model, shared = CountingModel(), SharedRuns()

    answers = asyncio.run(_together(shared, model, [[{"x": 1}], [{"x": 2, "fail": True}], [{"x": 3}]]))

    assert isinstance(answers[1], RuntimeError)
    assert answers[0].values.tolist() == [2.0] and answers[2].values.tolist() == [6.0]
    assert model.runs == [3, 1, 1, 1]  # together, then each alone


def test_a_cancelled_request_does_not_disturb_the_others() -> None:
    model, shared = CountingModel(), SharedRuns()

    async def cancel_one() -> tuple[Any, Any]:
        first = asyncio.ensure_future(shared.predict(_loaded(model), [{"x": 1}]))
        second = asyncio.ensure_future(shared.predict(_loaded(model), [{"x": 2}]))
        await asyncio.sleep(0)  # both are queued
        first.cancel()
        return await asyncio.gather(first, second, return_exceptions=True)

    first, second = asyncio.run(cancel_one())

    assert isinstance(first, asyncio.CancelledError)
    assert second.values.tolist() == [4.0]


@pytest.mark.parametrize("rows", [1, 5])
def test_rows_slices_values_and_probabilities(rows: int) -> None:
    values = np.arange(rows, dtype=np.float32)
    predictions = Predictions(values, None).rows(0, rows)

    assert predictions.values.tolist() == values.tolist() and predictions.probabilities is None
