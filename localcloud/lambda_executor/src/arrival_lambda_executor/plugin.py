"""plux plugin that makes the executor selectable as ``LAMBDA_RUNTIME_EXECUTOR=arrival-process``.

LocalStack resolves every plugin of the ``localstack.lambda.runtime_executor`` entry-point group
when it looks one up, so this module stays import-light: the executor (and with it most of
LocalStack's Lambda machinery) is only imported when this plugin is actually loaded.
"""

from __future__ import annotations

import os
from typing import Any

from localstack.runtime import hooks
from localstack.services.lambda_.invocation.plugins import RuntimeExecutorPlugin


class ArrivalProcessRuntimeExecutorPlugin(RuntimeExecutorPlugin):
    name = "arrival-process"

    def load(self, *args: Any, **kwargs: Any) -> type:
        from arrival_lambda_executor.executor import ProcessRuntimeExecutor

        return ProcessRuntimeExecutor


@hooks.on_infra_start(should_load=lambda: os.environ.get("ARRIVAL_IAM_ENFORCEMENT") == "1")
def register_iam_enforcement() -> None:
    """Runs every parsed request past the IAM check before its service (iam_enforcement.py)."""
    from localstack.aws.handlers import serve_custom_service_request_handlers

    from arrival_lambda_executor.iam_enforcement import enforce_identity_policies

    serve_custom_service_request_handlers.append(enforce_identity_policies)
