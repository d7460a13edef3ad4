"""The soak suites run on the e2e tier's training stack: a trainer and a serving instance booted by
the local EC2 agent, and the same `chain` fixture (pytest picks a fixture up where it is imported)."""

from __future__ import annotations

import http.client

import pytest

from tests.conftest import LocalCloud
from tests.e2e.conftest import Chain, chain
from tests.helpers import eventually

__all__ = ["chain", "serving_port"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: a load suite, minutes long (`make soak`)")


def answers_health(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@pytest.fixture(scope="session")
def serving_port(local_cloud: LocalCloud, chain: Chain) -> int:
    """The stack's EC2 serving instance, once its process answers."""
    port = local_cloud.settings.api_port
    eventually(lambda: answers_health(port), 120, what="the serving instance answering /health")
    return port
