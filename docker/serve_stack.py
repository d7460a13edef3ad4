"""The serving container's entry point in docker-compose.yml: it stands in for the serving instance's
user data, which on EC2 exports the stack's models bucket, reload topic and API key secret before
``arrival-serve``.

Under compose the stack is deployed after the container starts (``arrival deploy``), so this waits
for it, takes the same three values from its outputs, then runs the command it is given.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

LOG = logging.getLogger("arrival.serve_stack")
SETTLED = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE"}
POLL_SECONDS = 2.0


def deployed_outputs(cloudformation: Any, stack: str) -> dict[str, str] | None:
    """The stack's outputs once it is deployed and settled; None before."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except (ClientError, EndpointConnectionError):
        return None
    if not stacks or stacks[0]["StackStatus"] not in SETTLED:
        return None
    return {output["OutputKey"]: output["OutputValue"] for output in stacks[0].get("Outputs", [])}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    command = sys.argv[1:] or ["arrival-serve"]
    stack = os.environ.get("ARRIVAL_STACK_NAME", "arrival")
    cloudformation = boto3.client("cloudformation")
    LOG.info("waiting for stack %s (`arrival deploy`)", stack)
    while (outputs := deployed_outputs(cloudformation, stack)) is None:
        time.sleep(POLL_SECONDS)
    environment = {
        **os.environ,
        "ARRIVAL_SERVING_MODELS_BUCKET": outputs["ModelsBucketName"],
        # The server subscribes a queue of its own, named after the container's host name.
        "ARRIVAL_SERVING_RELOAD_TOPIC_ARN": outputs["ServingReloadTopicArn"],
        # The secret's name, not the key: arrival-serve reads the key itself (it refuses to start without).
        "ARRIVAL_SERVING_API_KEY_SECRET": outputs["ServingApiKeySecretArn"],
    }
    LOG.info("serving stack %s from bucket %s", stack, outputs["ModelsBucketName"])
    os.execvpe(command[0], command, environment)  # noqa: S606  # the container's own command


if __name__ == "__main__":
    main()
