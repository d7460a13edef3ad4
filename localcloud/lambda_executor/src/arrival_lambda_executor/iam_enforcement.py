"""IAM enforcement for LocalStack's open-source edition, which checks no permission at all: a request
signed with credentials from sts:AssumeRole is allowed only if that role's identity policies allow
it, as AWS would decide (iam_policy.py), and otherwise refused with AWS's error.

On when LocalStack starts with ARRIVAL_IAM_ENFORCEMENT=1 (the local cloud's `iam_enforcement`
setting). The operator's own credentials (`test`, or any key that no AssumeRole issued) stay
unrestricted, like an administrator's, and so do LocalStack's internal calls (CloudFormation
creating a stack's resources, a Lambda event source polling its queue).

A GET or HEAD of a key that does not exist is refused with 403, not answered 404, unless the role may
also s3:ListBucket the bucket: AWS then hides whether the key exists (its GetObject and HeadObject
reference), so code that reads "missing" from a 404 must hold ListBucket to see one on AWS.

Not covered yet, and so refused for an assumed role: any operation iam_requests.py does not map.
Not checked at all: session policies, trust policies, resource-based policies (bucket and queue
policies), permission boundaries and AWS managed policies.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from localstack.aws.api import CommonServiceException, RequestContext
from localstack.aws.api.s3 import AccessDenied
from localstack.aws.chain import HandlerChain
from localstack.http import Response
from localstack.services.iam.models import iam_stores
from localstack.services.sts.models import sts_stores
from localstack.utils.aws.request_context import extract_access_key_id_from_auth_header

from arrival_lambda_executor.iam_policy import Decision, Request, evaluate
from arrival_lambda_executor.iam_requests import LaunchTemplateFacts, requests_for

LOG = logging.getLogger(__name__)
# IAM and STS keep one store for every region.
_GLOBAL_REGION = "us-east-1"


def _access_key(context: RequestContext) -> str | None:
    presigned = context.request.args.get("X-Amz-Credential")
    if presigned:
        return str(presigned).split("/", 1)[0]
    key: str | None = extract_access_key_id_from_auth_header(dict(context.request.headers))
    return key


@functools.cache
def _warn_not_counted(role_name: str, policy_arn: str) -> None:
    """Once per role and policy: every request of the role would say it again."""
    LOG.warning(
        "IAM enforcement: %s's policy %s is not the account's own; not counted", role_name, policy_arn
    )


def _role_policies(account: str, role_name: str) -> list[dict[str, Any]]:
    store = iam_stores[account][_GLOBAL_REGION]
    role = store.ROLES.get(role_name)
    if role is None:
        return []
    documents = list(role.inline_policies.values())
    for arn in role.attached_policy_arns:
        managed = store.MANAGED_POLICIES.get(arn)
        if managed is None:
            _warn_not_counted(role_name, arn)
            continue
        documents.append(managed.versions[managed.policy["DefaultVersionId"]]["Document"])
    return [
        json.loads(unquote(document)) if isinstance(document, str) else document for document in documents
    ]


class LocalStackState:
    """The facts a request's authorization needs that the request does not carry, read from
    LocalStack's stores (and moto's, behind its EC2 and Secrets Manager)."""

    def __init__(self, account: str, region: str) -> None:
        self.account, self.region = account, region

    def secret_arn(self, secret_id: str) -> str | None:
        from moto.secretsmanager.models import secretsmanager_backends

        secret = secretsmanager_backends[self.account][self.region].secrets.get(secret_id)
        return str(secret.arn) if secret is not None else None

    def stack_arn(self, stack_name: str) -> str | None:
        from localstack.services.cloudformation.models import get_cloudformation_store
        from localstack.services.cloudformation.v2.provider import find_stack_v2

        stack = find_stack_v2(get_cloudformation_store(self.account, self.region), stack_name)
        return str(stack.stack_id) if stack is not None else None

    def instance_tags(self, instance_id: str) -> dict[str, str]:
        from moto.ec2.models import ec2_backends

        tags = ec2_backends[self.account][self.region].describe_tags(filters={"resource-id": [instance_id]})
        return {tag["key"]: tag["value"] for tag in tags}

    def launch_template(self, specification: Mapping[str, Any]) -> LaunchTemplateFacts | None:
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[self.account][self.region]
        try:
            template = (
                backend.get_launch_template(specification["LaunchTemplateId"])
                if specification.get("LaunchTemplateId")
                else backend.get_launch_template_by_name(specification["LaunchTemplateName"])
            )
            data = template.get_version(specification.get("Version") or "$Default").data
        except Exception:  # moto's not-found errors; EC2 itself then answers the call
            return None
        profile = data.get("IamInstanceProfile") or {}
        interfaces = data.get("NetworkInterfaces") or [{}]
        return LaunchTemplateFacts(
            arn=f"arn:aws:ec2:{self.region}:{self.account}:launch-template/{template.id}",
            image_id=data.get("ImageId"),
            security_group_ids=tuple(data.get("SecurityGroupIds") or interfaces[0].get("Groups") or ()),
            subnet_id=interfaces[0].get("SubnetId"),
            instance_profile=profile.get("Arn") or profile.get("Name"),
        )

    def object_missing(self, bucket: str, key: str) -> bool:
        """Whether the bucket exists and has no current object at the key (none, or a delete marker)."""
        from localstack.services.s3.models import S3DeleteMarker, s3_stores

        found = s3_stores[self.account][self.region].buckets.get(bucket)
        if found is None:
            return False  # S3 itself answers NoSuchBucket
        current = found.objects.get(key)
        return current is None or isinstance(current, S3DeleteMarker)

    def profile_role_arn(self, profile: str) -> str | None:
        store = iam_stores[self.account][_GLOBAL_REGION]
        entity = store.INSTANCE_PROFILES.get(profile.rsplit("/", 1)[-1])
        role = store.ROLES.get(entity.role_name) if entity and entity.role_name else None
        return str(role.role["Arn"]) if role is not None else None


# Without s3:ListBucket, AWS answers these 403 for a key that does not exist, so as not to tell.
_READS_HIDING_MISSING_KEYS = frozenset({"GetObject", "HeadObject"})


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
    state = LocalStackState(context.account_id, context.region)
    params = context.service_request or {}
    requests = requests_for(service, operation, params, context.account_id, context.region, state)
    if requests is None:
        LOG.warning("IAM enforcement: %s:%s is not mapped; refused for %s", service, operation, caller)
        raise _refusal(
            service,
            f"User: {caller} is not authorized to perform: {service}:{operation}: arrival's local cloud "
            "cannot check this operation yet (arrival_lambda_executor/iam_requests.py), so it refuses it",
        )
    policies = _role_policies(session.account_id, caller.split("/")[1])
    if (
        service == "s3"
        and operation in _READS_HIDING_MISSING_KEYS
        and not params.get("VersionId")
        and state.object_missing(params["Bucket"], params["Key"])
    ):
        # Checked after the read itself, so a read the role may not make is refused naming s3:GetObject.
        requests = [*requests, Request("s3:ListBucket", f"arn:aws:s3:::{params['Bucket']}")]
    for request in requests:
        decision = evaluate(policies, request)
        if decision is Decision.ALLOWED:
            continue
        why = (
            "with an explicit deny in an identity-based policy"
            if decision is Decision.EXPLICIT_DENY
            else f"because no identity-based policy allows the {request.action} action"
        )
        if request.action == "s3:ListBucket" and operation in _READS_HIDING_MISSING_KEYS:
            why += ": the key does not exist, and without s3:ListBucket AWS answers 403, not 404"
        LOG.info("IAM enforcement: %s may not %s on %s", caller, request.action, request.resource)
        raise _refusal(
            service,
            f"User: {caller} is not authorized to perform: {request.action} on resource: "
            f'"{request.resource}" {why}',
        )
