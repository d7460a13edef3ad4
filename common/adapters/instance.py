"""What an EC2 instance knows about itself: its id, from the instance metadata service (IMDSv2).
The endpoint comes from botocore's configuration (AWS_EC2_METADATA_SERVICE_ENDPOINT, or the config
file), as for boto3's own credential lookup, so the local agent's stub answers too."""

from __future__ import annotations

import botocore.session
from botocore.utils import IMDSFetcher

_CONFIG_VARIABLES = ("ec2_metadata_service_endpoint", "ec2_metadata_service_endpoint_mode")


class _InstanceIdFetcher(IMDSFetcher):
    def instance_id(self) -> str:
        # botocore's fetcher has no public "get this path"; these two are its own IMDSv2 steps. The
        # path is relative: botocore joins it to the endpoint with a "/" of its own.
        token = self._fetch_metadata_token()  # type: ignore[attr-defined]
        response = self._get_request("latest/meta-data/instance-id", None, token)  # type: ignore[attr-defined]
        return str(response.text)


def own_instance_id() -> str | None:
    """None when not on an instance (a developer running the worker by hand)."""
    # The fetcher reads no environment itself: boto3 hands it these settings from the session, and
    # without them it asks 169.254.169.254 whatever AWS_EC2_METADATA_SERVICE_ENDPOINT says.
    session = botocore.session.get_session()
    config = {name: session.get_config_variable(name) for name in _CONFIG_VARIABLES}
    try:
        return _InstanceIdFetcher(timeout=2, num_attempts=2, config=config).instance_id()
    except Exception:  # botocore raises several unrelated types for "no metadata service"
        return None
