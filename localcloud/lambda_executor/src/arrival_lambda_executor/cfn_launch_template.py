"""AWS::EC2::LaunchTemplate for LocalStack's CloudFormation, which has no provider for it in its
open-source edition (it deploys a placeholder whose Ref is "unknown"). EC2's own launch-template API
works, so the provider only translates the resource into CreateLaunchTemplate calls: the trainer's
launch template in template.yaml then deploys unchanged to LocalStack and to AWS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from localstack.services.cloudformation.resource_provider import (
    CloudFormationResourceProviderPlugin,
    OperationStatus,
    ProgressEvent,
    ResourceProvider,
    ResourceRequest,
)

SCHEMA_PATH = Path(__file__).with_name("cfn_launch_template.schema.json")


class LaunchTemplateProvider(ResourceProvider[dict[str, Any]]):
    TYPE = "AWS::EC2::LaunchTemplate"
    SCHEMA = json.loads(SCHEMA_PATH.read_text())

    def create(self, request: ResourceRequest[dict[str, Any]]) -> ProgressEvent[dict[str, Any]]:
        model = request.desired_state
        name = model.get("LaunchTemplateName") or f"{request.stack_name}-{request.logical_resource_id}"
        parameters: dict[str, Any] = {
            "LaunchTemplateName": name,
            "LaunchTemplateData": model.get("LaunchTemplateData", {}),
        }
        if model.get("VersionDescription"):
            parameters["VersionDescription"] = model["VersionDescription"]
        created = request.aws_client_factory.ec2.create_launch_template(**parameters)["LaunchTemplate"]
        model["LaunchTemplateName"] = name
        model["LaunchTemplateId"] = created["LaunchTemplateId"]
        model["LatestVersionNumber"] = str(created["LatestVersionNumber"])
        model["DefaultVersionNumber"] = str(created["DefaultVersionNumber"])
        return ProgressEvent(status=OperationStatus.SUCCESS, resource_model=model)

    def update(self, request: ResourceRequest[dict[str, Any]]) -> ProgressEvent[dict[str, Any]]:
        model = {**request.previous_state, **request.desired_state}
        model["LaunchTemplateId"] = request.previous_state["LaunchTemplateId"]
        ec2 = request.aws_client_factory.ec2
        version = ec2.create_launch_template_version(
            LaunchTemplateId=model["LaunchTemplateId"], LaunchTemplateData=model.get("LaunchTemplateData", {})
        )["LaunchTemplateVersion"]["VersionNumber"]
        ec2.modify_launch_template(LaunchTemplateId=model["LaunchTemplateId"], DefaultVersion=str(version))
        model["LatestVersionNumber"] = model["DefaultVersionNumber"] = str(version)
        return ProgressEvent(status=OperationStatus.SUCCESS, resource_model=model)

    def delete(self, request: ResourceRequest[dict[str, Any]]) -> ProgressEvent[dict[str, Any]]:
        model = request.desired_state
        if model.get("LaunchTemplateId"):
            request.aws_client_factory.ec2.delete_launch_template(LaunchTemplateId=model["LaunchTemplateId"])
        return ProgressEvent(status=OperationStatus.SUCCESS, resource_model=model)

    def read(self, request: ResourceRequest[dict[str, Any]]) -> ProgressEvent[dict[str, Any]]:
        raise NotImplementedError


class LaunchTemplateProviderPlugin(CloudFormationResourceProviderPlugin):
    name = "AWS::EC2::LaunchTemplate"

    def __init__(self) -> None:
        self.factory: type[ResourceProvider[dict[str, Any]]] | None = None

    def load(self) -> None:
        self.factory = LaunchTemplateProvider
