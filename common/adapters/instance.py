"""What an EC2 instance knows about itself: its id, from the instance metadata service (IMDSv2).
boto3's own fetcher honours AWS_EC2_METADATA_SERVICE_ENDPOINT, so the local stub answers too."""

from __future__ import annotations

from botocore.utils import IMDSFetcher


class _InstanceIdFetcher(IMDSFetcher):
    def instance_id(self) -> str:
        # botocore's fetcher has no public "get this path"; these two are its own IMDSv2 steps.
        token = self._fetch_metadata_token()  # type: ignore[attr-defined]
        response = self._get_request("/latest/meta-data/instance-id", None, token)  # type: ignore[attr-defined]
        return str(response.text)


def own_instance_id() -> str | None:
    """None when not on an instance (a developer running the worker by hand)."""
    try:
        return _InstanceIdFetcher(timeout=2, num_attempts=2).instance_id()
    except Exception:  # botocore raises several unrelated types for "no metadata service"
        return None
