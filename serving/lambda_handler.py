"""The serving function behind API Gateway: the same app through Mangum, built at the first invocation."""

from __future__ import annotations

from functools import cache
from typing import Any

from fastapi import FastAPI
from mangum import Mangum

from serving.app import create_app
from serving.capture import CaptureWriter


@cache
def asgi_handler() -> Mangum:
    # lifespan="off": Mangum would otherwise run the lifespan on every invocation. The store lives in
    # the cached app and checks its pointers on requests (mode="lambda"). No key: API Gateway checks
    # it before the function runs (template.yaml, ServingFunction's events).
    return Mangum(create_app(mode="lambda", api_key=None), lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    asgi = asgi_handler()
    try:
        response: dict[str, Any] = asgi(event, context)
    finally:
        # Lambda freezes the process between invocations, and may end it while frozen: a writer thread
        # would stall mid-write and lose its queue. What this invocation sampled is written before it
        # returns (a no-op when nothing was sampled).
        app: FastAPI = asgi.app  # type: ignore[assignment]
        capture: CaptureWriter = app.state.capture
        capture.flush()
    return response
