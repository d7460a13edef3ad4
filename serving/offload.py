"""Large predictions, answered in worker threads within a time budget.

A batch of thousands of records takes tens to hundreds of milliseconds to validate, run and write. On
the event loop it would hold every other request for that long: /health, and every other model. So a
request whose body is over `offload_body_bytes` is answered whole in one of `predict_threads` worker
threads (ONNX lets go of the GIL while it runs; validation and JSON hold it, but the interpreter hands
it back to the loop every few milliseconds). Smaller requests stay on the loop, where a thread hop
would cost more than they do, and share their ONNX runs (serving/shared_runs.py).

Each offloaded request has a budget, counted from its arrival: past it, the client gets a 503 with
rule `over_time_budget` at once, rather than waiting on a queue of other large batches. A thread
cannot be stopped mid-run, so an abandoned answer is finished but thrown away (never captured), and a
request still queued when its budget ends never starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from serving.schemas import Problem, RequestError

T = TypeVar("T")
OVER_TIME_BUDGET = "over_time_budget"


class OverBudgetError(Exception):
    """The worker found its request's budget spent: whatever it would answer, nobody waits for it."""


class Budget:
    """One offloaded request's deadline (time.perf_counter()), and who answers it: the worker with
    its result, or the loop with a 503. Exactly one of them, whatever the timing."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._settled = False

    def check(self) -> None:
        """In the worker, between steps: stop here if the budget is spent."""
        if time.perf_counter() > self.deadline:
            raise OverBudgetError

    def claim(self) -> bool:
        """The worker, done: True if its answer is the one the client gets (then it may capture it)."""
        with self._lock:
            if self._settled:
                return False
            self._settled = True
            return True

    def abandon(self) -> bool:
        """The loop, out of time: True if the worker's answer will never be used."""
        return self.claim()


def over_budget(seconds: float) -> RequestError:
    message = (
        f"the prediction did not finish within its time budget of {seconds:g} s: the server is busy "
        "with other large batches, or this one is too large for it; retry later, or send smaller batches"
    )
    return RequestError(503, [Problem("body", OVER_TIME_BUDGET, message)])


class Offloaded:
    def __init__(self, threads: int, budget_seconds: float) -> None:
        self.budget_seconds = budget_seconds
        # Threads start on first use: an app that never sees a large request never starts one.
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="predict")
        # Run parts of a worker's ONNX runs beside it, on another core (ONNX lets go of the GIL). Apart
        # from the workers, and never waiting on anything: a worker waiting on a helper cannot
        # deadlock the way it would waiting on a fellow worker.
        self.helpers = ThreadPoolExecutor(max(1, threads - 1), thread_name_prefix="predict-part")

    async def answer(self, job: Callable[[Budget], T], started: float) -> T:
        """`job(budget)` in a worker thread; a 503 (RequestError) once the budget from `started`
        (time.perf_counter()) is spent. Any other error the job raises is raised here."""
        budget = Budget(started + self.budget_seconds)
        future = asyncio.get_running_loop().run_in_executor(self._executor, job, budget)
        try:
            # Shielded: a timeout must not cancel the future before we know who answers.
            return await asyncio.wait_for(asyncio.shield(future), budget.deadline - time.perf_counter())
        except OverBudgetError:
            raise over_budget(self.budget_seconds) from None
        except TimeoutError:
            if budget.abandon():
                future.cancel()  # still queued: it never starts
                raise over_budget(self.budget_seconds) from None
            return await future  # the worker claimed the answer as the budget ran out: it is ready

    def shutdown(self) -> None:
        """Queued requests are dropped; running ones finish (their clients are gone by now)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.helpers.shutdown(wait=False, cancel_futures=True)
