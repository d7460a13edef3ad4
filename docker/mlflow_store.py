"""The entry point of the MLflow image (Dockerfile, target ``mlflow``): prepares the server's stores as
``localcloud/tracking_server.py`` does for ``arrival up``, then runs the command it is given.

LocalStack keeps no state between runs. So a missing artifact bucket means LocalStack started empty,
and a SQLite registry left in the volume would name runs whose artifacts are gone (every later gate
would fail): it is removed, and the bucket created. If the bucket is there, only MLflow was
restarted, and its registry is kept, as the supervisor keeps it when it restarts MLflow.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

LOG = logging.getLogger("arrival.mlflow_store")
SQLITE_PREFIX = "sqlite:///"


def option(command: list[str], name: str) -> str | None:
    """The value of ``--name value`` in the command, if it is there."""
    if name in command[:-1]:
        return command[command.index(name) + 1]
    return None


def prepare_stores(command: list[str]) -> None:
    destination = option(command, "--artifacts-destination") or ""
    if not destination.startswith("s3://"):
        return
    bucket = destination.removeprefix("s3://").split("/", 1)[0]
    s3 = boto3.client("s3")  # endpoint, region and credentials from the environment
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        backend = option(command, "--backend-store-uri") or ""
        if backend.startswith(SQLITE_PREFIX):
            database = Path(backend.removeprefix(SQLITE_PREFIX))
            if database.exists():
                LOG.info("artifact bucket %s is new: starting a fresh registry (%s)", bucket, database)
                database.unlink()
        s3.create_bucket(Bucket=bucket)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    command = sys.argv[1:]
    if not command:
        sys.exit("usage: mlflow_store.py mlflow server ... (the command to run once the stores are ready)")
    prepare_stores(command)
    os.execvp(command[0], command)  # noqa: S606  # the image's own command, from its CMD or compose


if __name__ == "__main__":
    main()
