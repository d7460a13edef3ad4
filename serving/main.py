"""`arrival-serve`: the model server on EC2, one uvicorn process."""

from __future__ import annotations

import logging

import uvicorn

from serving.app import create_app
from serving.settings import get_serving_settings


def main() -> None:
    settings = get_serving_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(
        create_app(settings, mode="server"),
        host=settings.host,
        port=settings.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,  # a log line per prediction costs more than the prediction; /metrics counts them
        log_level="info",
    )
