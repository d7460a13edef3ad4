"""Deploying ``template.yaml`` (SAM) to CloudFormation: LocalStack's or AWS's, by AWS_ENDPOINT_URL.

What ``sam build`` + ``sam deploy`` do, reduced to what arrival's templates need: package each
function's code as a zip, upload it, create or update the stack through a change set (the SAM
transform needs one), wait, and return the outputs. We do it ourselves because the SAM CLI pulls in
Docker for builds and pins a boto3 that conflicts with ours; the template stays `sam deploy`-able.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.exceptions import ClientError, WaiterError

from localcloud import release

Say = Callable[[str], None]

# Each packaged resource type and the property holding its local code directory.
_CODE_PROPERTIES = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_FAST_WAITER = {"Delay": 1, "MaxAttempts": 900}


class DeployError(RuntimeError):
    pass


class _TemplateLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !GetAtt, !Sub...) as their long form, so the
    template can be rewritten and sent as JSON. No library does just this: cfn-lint's decoder does,
    but it would make the whole linter a runtime dependency."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path) -> dict[str, Any]:
    template: dict[str, Any] = yaml.load(path.read_text(), Loader=_TemplateLoader)  # noqa: S506  # SafeLoader subclass
    return template


def _zip_directory(source: Path, destination: Path) -> None:
    """A reproducible zip: same files, same bytes, so unchanged code is not uploaded again."""
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), _ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())


def _build(
    logical_id: str, resource: dict[str, Any], code_dir: Path, artifacts: Path, *, vendor_dependencies: bool
) -> None:
    """`sam build`'s makefile build method, or a plain copy of the code directory."""
    build_method = resource.get("Metadata", {}).get("BuildMethod")
    if build_method == "makefile":
        subprocess.run(
            ["make", "--no-print-directory", f"build-{logical_id}", f"ARTIFACTS_DIR={artifacts}"],
            cwd=code_dir,
            check=True,
            env={**os.environ, "ARRIVAL_VENDOR_LAMBDA_DEPS": "1" if vendor_dependencies else "0"},
        )
    else:
        shutil.copytree(code_dir, artifacts, dirs_exist_ok=True)


def _ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        options = (
            {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        )
        s3.create_bucket(Bucket=bucket, **options)


def package(
    template_path: Path,
    template: dict[str, Any],
    bucket: str,
    s3: Any,
    say: Say,
    *,
    vendor_dependencies: bool = True,
) -> None:
    """Replace every local code directory in the template with the S3 address of its zip.

    With ``vendor_dependencies``, each zip carries its function's packages, built for the Lambda
    runtime, as `sam build` makes it: what AWS needs. Without, it carries requirements.txt alone,
    which only the local cloud's Lambda executor installs (into a cached virtualenv), and the
    upload is much smaller."""
    root = template_path.parent
    globals_code = template.get("Globals", {}).get("Function", {}).get("CodeUri")
    for logical_id, resource in template.get("Resources", {}).items():
        code_property = _CODE_PROPERTIES.get(resource.get("Type", ""))
        if code_property is None:
            continue
        properties = resource.setdefault("Properties", {})
        location = properties.get(code_property, globals_code if code_property == "CodeUri" else None)
        if not isinstance(location, str) or location.startswith("s3://"):
            continue
        with tempfile.TemporaryDirectory(prefix=f"arrival-{logical_id}-") as scratch:
            artifacts = Path(scratch) / "artifacts"
            artifacts.mkdir()
            _build(
                logical_id,
                resource,
                (root / location).resolve(),
                artifacts,
                vendor_dependencies=vendor_dependencies,
            )
            archive = Path(scratch) / "code.zip"
            _zip_directory(artifacts, archive)
            digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:20]
            key = f"functions/{logical_id}-{digest}.zip"
            try:
                s3.head_object(Bucket=bucket, Key=key)
            except ClientError:
                say(f"uploading {logical_id} ({archive.stat().st_size // 1024} KiB)")
                s3.upload_file(str(archive), bucket, key)
        properties[code_property] = f"s3://{bucket}/{key}"


def _release_parameters(
    template: dict[str, Any], overrides: dict[str, str], bucket: str, s3: Any, say: Say
) -> dict[str, str]:
    """Build and publish the release the template's instances install, unless the template takes no
    release or the deployer names one (a rollback to an earlier release)."""
    parameters = template.get("Parameters", {})
    if "ReleaseVersion" not in parameters:
        return {}
    if "ReleaseVersion" in overrides:  # an earlier release, published to this same bucket
        return {"ReleaseBucket": bucket}
    return publish_project_release(s3, bucket, say)


def publish_project_release(s3: Any, bucket: str, say: Say) -> dict[str, str]:
    """Build the checkout's release and publish it to ``bucket``: the template parameters naming it."""
    with tempfile.TemporaryDirectory(prefix="arrival-release-") as scratch:
        built = release.build_release(Path(scratch) / "release")
        uri = release.publish_release(s3, bucket, built)
    say(f"release {built.version}: {uri}")
    return {"ReleaseBucket": bucket, "ReleaseVersion": built.version}


def publish_release_for_sam(say: Say = lambda _: None) -> dict[str, str]:
    """What `sam deploy` cannot do: publish the release to the bucket `arrival deploy` uses."""
    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    account = session.client("sts").get_caller_identity()["Account"]
    s3: Any = session.client("s3")
    bucket = artifacts_bucket(account, region)
    _ensure_bucket(s3, bucket, region)
    return publish_project_release(s3, bucket, say)


def artifacts_bucket(account: str, region: str) -> str:
    """The deploy's own bucket (function zips, templates, releases): one per account and region."""
    return f"arrival-artifacts-{account}-{region}"


def _stack_exists(cloudformation: Any, stack_name: str) -> bool:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            return False
        raise
    return bool(stacks) and stacks[0]["StackStatus"] != "REVIEW_IN_PROGRESS"


def _parameters(template: dict[str, Any], overrides: dict[str, str]) -> list[dict[str, str]]:
    unknown = set(overrides) - set(template.get("Parameters", {}))
    if unknown:
        raise DeployError(f"the template has no parameter(s) {sorted(unknown)}")
    return [{"ParameterKey": key, "ParameterValue": value} for key, value in overrides.items()]


# The template's network parameters: given together, or all taken from the account's default VPC.
NETWORK_PARAMETERS = ("VpcId", "TrainerSubnetId", "ServingSubnetId", "ServingSecondSubnetId")


def _previous_network(cloudformation: Any, stack_name: str) -> dict[str, str]:
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    values = {item["ParameterKey"]: item.get("ParameterValue", "") for item in stack.get("Parameters", [])}
    return {name: values[name] for name in NETWORK_PARAMETERS if values.get(name)}


def _default_network(ec2: Any, region: str) -> dict[str, str]:
    """The default VPC, its default subnet in the first Availability Zone by name for both roles, and
    the one in the second zone for the model servers' second subnet (their load balancer needs two
    zones)."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise DeployError(
            f"VpcId is required: this account has no default VPC in {region}; pass "
            "--parameter VpcId=vpc-... --parameter TrainerSubnetId=subnet-... "
            "--parameter ServingSubnetId=subnet-... (docs/aws.md, Networking)"
        )
    vpc = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    if not subnets:
        raise DeployError(
            f"TrainerSubnetId is required: the default VPC {vpc} has no default subnet; pass "
            "--parameter TrainerSubnetId=subnet-... --parameter ServingSubnetId=subnet-..."
        )
    by_zone = sorted(subnets, key=lambda found: found["AvailabilityZone"])
    if len(by_zone) < 2:
        raise DeployError(
            f"ServingSecondSubnetId is required: the default VPC {vpc} has a default subnet in one "
            "Availability Zone only; pass --parameter ServingSecondSubnetId=subnet-... in another zone"
        )
    subnet, second = by_zone[0]["SubnetId"], by_zone[1]["SubnetId"]
    return {
        "VpcId": vpc,
        "TrainerSubnetId": subnet,
        "ServingSubnetId": subnet,
        "ServingSecondSubnetId": second,
    }


def network_parameters(
    template: dict[str, Any],
    overrides: dict[str, str],
    previous: dict[str, str],
    default_network: Callable[[], dict[str, str]],
    say: Say,
) -> dict[str, str]:
    """What the deploy passes for VpcId and the subnets when they are not all given: the stack's own
    values on an update (a forgotten setting must not move its instances), else the default VPC's,
    said in one line. Given in part, the rest is refused rather than guessed from another VPC."""
    expected = [name for name in NETWORK_PARAMETERS if name in template.get("Parameters", {})]
    missing = [name for name in expected if name not in overrides]
    if not missing:
        return {}
    if len(missing) < len(expected):
        raise DeployError(
            f"{missing[0]} is required with {', '.join(n for n in expected if n not in missing)}: "
            f"pass --parameter {missing[0]}=... in the same VPC (docs/aws.md, Networking)"
        )
    if all(name in previous for name in missing):
        return {name: previous[name] for name in missing}
    network = default_network()
    subnets = dict.fromkeys(network[name] for name in missing if name != "VpcId")
    say(
        f"{', '.join(missing)} not given: using the default VPC {network['VpcId']} "
        f"and its subnet{'s' if len(subnets) > 1 else ''} {', '.join(subnets)}"
    )
    return {name: network[name] for name in missing}


def _stack_failure(cloudformation: Any, stack_name: str) -> str:
    events = cloudformation.describe_stack_events(StackName=stack_name)["StackEvents"]
    reasons = [
        f"{event['LogicalResourceId']}: {event.get('ResourceStatusReason', '')}"
        for event in events
        if event["ResourceStatus"].endswith("FAILED")
    ]
    return "; ".join(reasons[:5]) or "no reason recorded"


def _upload_template(template: dict[str, Any], bucket: str, s3: Any) -> str:
    """The packaged template in the artifacts bucket, by its content, as `sam deploy` passes one:
    CloudFormation takes at most 51,200 bytes in the request itself, and the template is larger."""
    body = json.dumps(template, separators=(",", ":")).encode()
    key = f"templates/{hashlib.sha256(body).hexdigest()}.json"
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return f"{s3.meta.endpoint_url}/{bucket}/{key}"


def deploy_stack(
    template_path: Path,
    stack_name: str,
    overrides: dict[str, str],
    say: Say = lambda _: None,
    *,
    vendor_dependencies: bool = True,
) -> dict[str, str]:
    """Create or update the stack and return its outputs. The same on AWS and on the local cloud:
    which one is boto3's configuration (AWS_ENDPOINT_URL); only the local cloud may go without
    ``vendor_dependencies`` (see `package`)."""
    session = boto3.session.Session()
    region = session.region_name or "us-east-1"
    account = session.client("sts").get_caller_identity()["Account"]
    # Typed loosely: the stubs' TypedDicts add nothing to code that builds its requests from a template.
    s3: Any = session.client("s3")
    cloudformation: Any = session.client("cloudformation")

    template = load_template(template_path)
    # Before packaging: a network that cannot be resolved is refused at once.
    exists = _stack_exists(cloudformation, stack_name)
    ec2: Any = session.client("ec2")
    overrides = {
        **overrides,
        **network_parameters(
            template,
            overrides,
            _previous_network(cloudformation, stack_name) if exists else {},
            lambda: _default_network(ec2, region),
            say,
        ),
    }
    bucket = artifacts_bucket(account, region)
    _ensure_bucket(s3, bucket, region)
    package(template_path, template, bucket, s3, say, vendor_dependencies=vendor_dependencies)
    overrides = {**_release_parameters(template, overrides, bucket, s3, say), **overrides}

    change_set_name = f"arrival-{int(time.time() * 1000)}"
    say(f"{'updating' if exists else 'creating'} stack {stack_name}")
    cloudformation.create_change_set(
        StackName=stack_name,
        ChangeSetName=change_set_name,
        ChangeSetType="UPDATE" if exists else "CREATE",
        TemplateURL=_upload_template(template, bucket, s3),
        Parameters=_parameters(template, overrides),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    try:
        cloudformation.get_waiter("change_set_create_complete").wait(
            StackName=stack_name, ChangeSetName=change_set_name, WaiterConfig=_FAST_WAITER
        )
    except WaiterError as error:
        change_set = cloudformation.describe_change_set(StackName=stack_name, ChangeSetName=change_set_name)
        reason = change_set.get("StatusReason", "")
        if "didn't contain changes" in reason or "No updates" in reason:
            say("no changes")
            return stack_outputs(cloudformation, stack_name)
        raise DeployError(f"change set for {stack_name} failed: {reason}") from error
    cloudformation.execute_change_set(StackName=stack_name, ChangeSetName=change_set_name)
    waiter = "stack_update_complete" if exists else "stack_create_complete"
    try:
        cloudformation.get_waiter(waiter).wait(StackName=stack_name, WaiterConfig=_FAST_WAITER)
    except WaiterError as error:
        raise DeployError(
            f"stack {stack_name} failed: {_stack_failure(cloudformation, stack_name)}"
        ) from error
    return stack_outputs(cloudformation, stack_name)


def login_secret_name(stack_name: str) -> str:
    return f"{stack_name}/mlflow-login"


def put_login_secret(name: str, username: str, password: str) -> str:
    """Create the secret holding the tracking server's login, or give it this value if it exists;
    its ARN, for the stack's MlflowLoginSecretArn. Where boto3 points: the local cloud's deploy keeps
    its own server's login there, so its trainers read it as they would on AWS."""
    secretsmanager: Any = boto3.client("secretsmanager")
    value = json.dumps({"username": username, "password": password})
    try:
        created = secretsmanager.create_secret(
            Name=name, SecretString=value, Description="arrival: the MLflow tracking server's login"
        )
    except secretsmanager.exceptions.ResourceExistsException:
        current = secretsmanager.get_secret_value(SecretId=name)
        if current["SecretString"] != value:  # a redeploy with the same login adds no version
            secretsmanager.put_secret_value(SecretId=name, SecretString=value)
        return str(current["ARN"])
    return str(created["ARN"])


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
