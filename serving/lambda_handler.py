"""The serving function behind API Gateway: the same app through Mangum, built at the first invocation."""

from __future__ import annotations

from functools import cache
from typing import Any

from mangum import Mangum

from serving.app import create_app


@cache
def asgi_handler() -> Mangum:
    # lifespan="off": Mangum would otherwise run the lifespan on every invocation. The store lives in
    # the cached app and checks its pointers on requests (mode="lambda").
    return Mangum(create_app(mode="lambda"), lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    response: dict[str, Any] = asgi_handler()(event, context)
    return response
