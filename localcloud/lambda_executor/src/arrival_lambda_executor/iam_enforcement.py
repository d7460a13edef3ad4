"""IAM enforcement for LocalStack's open-source edition, which checks no permission at all: a request
signed with credentials from sts:AssumeRole is allowed only if that role's identity policies allow
it, as AWS would decide (iam_policy.py), and otherwise refused with AWS's error.

On when LocalStack starts with ARRIVAL_IAM_ENFORCEMENT=1 (the local cloud's `iam_enforcement`
setting). The operator's own credentials (`test`, or any key that no AssumeRole issued) stay
unrestricted, like an administrator's, and so do LocalStack's internal calls (CloudFormation
creating a stack's resources, a Lambda event source polling its queue).

Not covered yet, and so refused for an assumed role: any operation iam_requests.py does not map.
Not checked at all: session policies, trust policies, resource-based policies (bucket and queue
policies), permission boundaries and AWS managed policies.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import unquote

from localstack.aws.api import CommonServiceException, RequestContext
from localstack.aws.api.s3 import AccessDenied
from localstack.aws.chain import HandlerChain
from localstack.http import Response
from localstack.services.iam.models import iam_stores
from localstack.services.sts.models import sts_stores
from localstack.utils.aws.request_context import extract_access_key_id_from_auth_header

from arrival_lambda_executor.iam_policy import Decision, evaluate
from arrival_lambda_executor.iam_requests import requests_for

LOG = logging.getLogger(__name__)
# IAM and STS keep one store for every region.
_GLOBAL_REGION = "us-east-1"


def _access_key(context: RequestContext) -> str | None:
    presigned = context.request.args.get("X-Amz-Credential")
    if presigned:
        return str(presigned).split("/", 1)[0]
    key: str | None = extract_access_key_id_from_auth_header(dict(context.request.headers))
    return key


def _role_policies(account: str, role_name: str) -> list[dict[str, Any]]:
    store = iam_stores[account][_GLOBAL_REGION]
    role = store.ROLES.get(role_name)
    if role is None:
        return []
    documents = list(role.inline_policies.values())
    for arn in role.attached_policy_arns:
        managed = store.MANAGED_POLICIES.get(arn)
        if managed is None:
            LOG.warning(
                "IAM enforcement: %s's policy %s is not the account's own; not counted", role_name, arn
            )
            continue
        documents.append(managed.versions[managed.policy["DefaultVersionId"]]["Document"])
    return [
        json.loads(unquote(document)) if isinstance(document, str) else document for document in documents
    ]


def _refusal(service: str, message: str) -> Exception:
    """AWS's refusal in the service's own shape (S3's modelled error, the common error elsewhere)."""
    refusal: Exception = (
        AccessDenied(message)
        if service == "s3"
        else CommonServiceException("AccessDenied", message, status_code=403, sender_fault=True)
    )
    return refusal


def enforce_identity_policies(chain: HandlerChain, context: RequestContext, response: Response) -> None:
    if context.operation is None or context.service is None or context.is_internal_call:
        return
    access_key = _access_key(context)
    session = (
        sts_stores[context.account_id][_GLOBAL_REGION].credentials.get(access_key) if access_key else None
    )
    if session is None:
        return  # the operator's own credentials
    service, operation = context.service.service_name, context.operation.name
    caller = session.arn
    if session.is_expired():
        raise CommonServiceException("ExpiredToken", "The security token included in the request is expired")
    requests = requests_for(
        service, operation, context.service_request or {}, context.account_id, context.region
    )
    if requests is None:
        LOG.warning("IAM enforcement: %s:%s is not mapped; refused for %s", service, operation, caller)
        raise _refusal(
            service,
            f"User: {caller} is not authorized to perform: {service}:{operation}: arrival's local cloud "
            "cannot check this operation yet (arrival_lambda_executor/iam_requests.py), so it refuses it",
        )
    policies = _role_policies(session.account_id, caller.split("/")[1])
    for request in requests:
        decision = evaluate(policies, request)
        if decision is Decision.ALLOWED:
            continue
        why = (
            "with an explicit deny in an identity-based policy"
            if decision is Decision.EXPLICIT_DENY
            else f"because no identity-based policy allows the {request.action} action"
        )
        LOG.info("IAM enforcement: %s may not %s on %s", caller, request.action, request.resource)
        raise _refusal(
            service,
            f"User: {caller} is not authorized to perform: {request.action} on resource: "
            f'"{request.resource}" {why}',
        )
