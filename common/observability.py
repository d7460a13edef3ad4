"""The one logger, tracer and metrics every handler shares. Service name, namespace and log level come
from the template's Globals (POWERTOOLS_* variables), not from code."""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric

logger = Logger()
tracer = Tracer()
metrics = Metrics()


def metric(name: str, model: str | None, value: float = 1, unit: MetricUnit = MetricUnit.Count) -> None:
    """One metric now, by model ("unknown" when the file named none), flushed on its own: ingest and
    batch count files and rows per model, outside the handler's batch of metrics."""
    with single_metric(name=name, unit=unit, value=value) as one:
        one.add_dimension(name="model", value=model or "unknown")
