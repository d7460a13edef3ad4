"""LocalStack Lambda runtime executor that runs Python functions as local processes (no Docker).

Select it in LocalStack with ``LAMBDA_RUNTIME_EXECUTOR=arrival-process``.
"""
