"""The one logger, tracer and metrics every handler shares. Service name, namespace and log level come
from the template's Globals (POWERTOOLS_* variables), not from code."""

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger()
tracer = Tracer()
metrics = Metrics()
