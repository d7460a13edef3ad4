"""Requests that arrive together share one ONNX run.

Under load the event loop hands the app several requests in the same turn. Each validates its body,
then queues its records here; the first to queue schedules the run for right after the others of
that turn have queued theirs. onnxruntime's fixed cost per call is most of a single-record
prediction, so one run of N rows costs little more than one run of one row: at 16 connections this
nearly doubles throughput, while a lone request waits no longer than one turn of the loop. The run
stays inline on the event loop's thread: no thread hop, no timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from common.bundle_loader import Predictions
from serving.bundle import LoadedModel

Request = tuple[Sequence[dict[str, Any]], "asyncio.Future[Predictions]"]


class SharedRuns:
    def __init__(self) -> None:
        # Keyed by id(): the queued requests hold their model, so no id is reused while it waits.
        self._waiting: dict[int, tuple[LoadedModel, list[Request]]] = {}

    async def predict(self, model: LoadedModel, records: Sequence[dict[str, Any]]) -> Predictions:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._run_waiting)
        answer: asyncio.Future[Predictions] = loop.create_future()
        self._waiting.setdefault(id(model), (model, []))[1].append((records, answer))
        return await answer

    def _run_waiting(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for model, requests in waiting.values():
            run_together(model, requests)


def run_together(model: LoadedModel, requests: list[Request]) -> None:
    rows = [row for records, _ in requests for row in records] if len(requests) > 1 else requests[0][0]
    try:
        predictions = model.predict(rows)
    except Exception as error:
        if len(requests) > 1:  # one request's failure must not become its neighbours'
            for request in requests:
                run_together(model, [request])
            return
        _settle(requests[0][1], error)
        return
    start = 0
    for records, answer in requests:
        end = start + len(records)
        _settle(answer, predictions.rows(start, end))
        start = end


def _settle(answer: asyncio.Future[Predictions], outcome: Predictions | Exception) -> None:
    if answer.done():  # the client went away and its request was cancelled
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
