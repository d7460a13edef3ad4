"""plux plugin that makes the executor selectable as ``LAMBDA_RUNTIME_EXECUTOR=arrival-process``.

LocalStack resolves every plugin of the ``localstack.lambda.runtime_executor`` entry-point group
when it looks one up, so this module stays import-light: the executor (and with it most of
LocalStack's Lambda machinery) is only imported when this plugin is actually loaded.
"""

from __future__ import annotations

from typing import Any

from localstack.services.lambda_.invocation.plugins import RuntimeExecutorPlugin


class ArrivalProcessRuntimeExecutorPlugin(RuntimeExecutorPlugin):
    name = "arrival-process"

    def load(self, *args: Any, **kwargs: Any) -> type:
        from arrival_lambda_executor.executor import ProcessRuntimeExecutor

        return ProcessRuntimeExecutor
