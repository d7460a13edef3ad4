"""The API key `arrival-serve` requires in `x-api-key`. On Lambda, API Gateway checks the same key
before the function runs, so the app there is built without one and checks nothing itself."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from serving.schemas import Problem

API_KEY_HEADER = "x-api-key"
# One scheme in the OpenAPI document, so /docs offers to send the key.
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="ApiKey",
    description="The stack's API key (kept in Secrets Manager; the ServingApiKeySecretArn output names it)",
    auto_error=False,  # refused by ApiKeyCheck below, with the API's own problem format and 403
)


# How a route that needs the key documents its refusal (serving/openapi.py adds the Problems schema).
FORBIDDEN: dict[int | str, dict[str, object]] = {
    403: {
        "description": "No API key in x-api-key, or a wrong one (rules missing_api_key, wrong_api_key)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problems"}}},
    }
}


class ApiKeyCheck:
    """Whether a request's key is the one key, compared in constant time; with no key, everything passes
    (the Lambda app: API Gateway has already checked)."""

    def __init__(self, api_key: str | None) -> None:
        # Bytes: compare_digest refuses str holding anything but ASCII, which a caller may send.
        self._expected = api_key.encode() if api_key is not None else None

    def refusal(self, given: str | None) -> Problem | None:
        """Why a request with this header value is refused, or None if it may pass."""
        if self._expected is None:
            return None
        if not given:
            return Problem(API_KEY_HEADER, "missing_api_key", f"send the stack's API key in {API_KEY_HEADER}")
        if not secrets.compare_digest(given.encode(), self._expected):
            return Problem(API_KEY_HEADER, "wrong_api_key", f"the {API_KEY_HEADER} header holds no valid key")
        return None


async def require_api_key(request: Request, given: Annotated[str | None, Security(api_key_header)]) -> None:
    """A dependency: 403 unless the request carries the key."""
    check: ApiKeyCheck = request.app.state.api_key_check
    problem = check.refusal(given)
    if problem is not None:
        raise HTTPException(
            status_code=403,
            detail=[{"field": problem.field, "rule": problem.rule, "message": problem.message}],
        )


ApiKeyRequired = Depends(require_api_key)
