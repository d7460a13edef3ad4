"""The EC2 instance agent: LocalStack's EC2 only records instances, so this "boots" them.

It watches LocalStack for arrival's instances and boots them as their user data would on EC2: the
user data's last line runs deploy/arrival-boot.sh with the allow-listed command of the instance's
role (nothing else from user data ever runs on the host). The agent then does what that script does
(localcloud/instance_release.py): it reads the release the user data names with the instance's own
role, installs it with uv into an environment that holds only that release, and runs the command
from there, never from the checkout.
Each process learns its instance id from an instance-metadata stub on localhost, as from IMDS on EC2.

The agent supervises each process as the script's systemd unit does (Restart=always): a process that
exits on a running instance is started again a second later. An instance that is stopped ends its
process, and starting it again starts the process again from the release it installed, without
running user data again (cloud-init runs it at the first boot only). A terminated instance ends its
process for good: the trainer terminates its own instance when idle, and the reconciler one whose
heartbeat stopped. So the reconciler's RunInstances call is what really starts a trainer.

A server's port is held by the agent, as by systemd's socket unit on EC2 (arrival-server.socket):
the agent binds it at the server's first start, hands it to every start of the process (systemd's
LISTEN_FDS protocol), and closes it only when the instance stops or ends. A restart then makes
clients wait in the socket's backlog instead of refusing them (serving/listening.py).

A server follows its stack's release, as arrival-boot's timer makes it do on EC2: once the stack is
settled on a ReleaseVersion other than the one the server runs, the agent installs that release
and restarts the process from it, on the same socket, so that no request fails.

Servers answer on localhost only, each on a port of its own, as each EC2 instance has an address of
its own: the first on the local cloud's API port (``ARRIVAL_API_PORT``, where ``arrival status`` says
the API is), every other one, while that port is held, on a free port. The agent tags each server's
instance with its port (``arrival:api-port``), so tests and tools find every instance of a stack
with ``ServingInstances`` above 1 (on AWS, the load balancer stands in front of them instead).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.credentials import CredentialProvider, RefreshableCredentials
from botocore.exceptions import ClientError

from localcloud.emulator import Service
from localcloud.instance_credentials import RoleCredentials
from localcloud.instance_release import InstalledRelease, ReleaseInstallError, install_release
from localcloud.log_shipper import LogShipper
from localcloud.processes import die_with_parent, free_port
from localcloud.release import ReleaseError, release_uri
from localcloud.settings import LocalCloudSettings, get_local_cloud_settings

LOG = logging.getLogger("arrival.instance_agent")
ROLE_TAG = "arrival:role"
STACK_TAG = "arrival:stack"
# Where the agent runs a server instance's API, on localhost (set by the agent, not by AWS).
API_PORT_TAG = "arrival:api-port"
# The only commands user data may start, by role: deploy/arrival-boot.sh, the release's executable,
# then its exact argument shape.
BOOT_COMMAND = "/usr/local/bin/arrival-boot"
ALLOWED_COMMANDS = {
    "trainer": re.compile(
        rf"^{BOOT_COMMAND} arrival-worker --role trainer( --stack [a-z0-9][a-z0-9-]{{0,127}})?$"
    ),
    "server": re.compile(rf"^{BOOT_COMMAND} arrival-serve$"),
}
LIVE = {"pending", "running"}
STOPPED = {"stopping", "stopped"}
# systemd's RestartSec in arrival-boot.sh's unit.
RESTART_SECONDS = 1.0
# How often a server looks for a new release of its stack. On EC2, arrival-boot's timer looks every
# 30 s (a DescribeStacks call per server per half minute); the agent looks more often, so that the
# tests do not wait on it.
FOLLOW_SECONDS = 2.0
# The server's socket is the process's file descriptor 3, as systemd passes it (sd_listen_fds(3)).
LISTEN_FD = 3
# systemd's socket units listen with the kernel's maximum backlog by default: what arrives while the
# server restarts waits there.
LISTEN_BACKLOG = 4096
# What user data may set for the command, with `export NAME=value` lines: the worker's own settings.
# AWS_* stays the agent's (the endpoint and credentials of this local cloud), and so does
# MLFLOW_TRACKING_URI: a trainer unpickles its champion from that server, so whoever may call
# RunInstances must not be able to point this host at a server of their choosing.
ALLOWED_VARIABLES = re.compile(r"^ARRIVAL_[A-Z0-9_]+$")
# Where boto3 would find credentials before asking IMDS: none of them reaches an instance.
_HOST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
}


def command_from_user_data(user_data: str, role: str) -> list[str] | None:
    """The command the user data's last line boots, if it is the allow-listed command for the role."""
    lines = [line.strip() for line in user_data.splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    pattern = ALLOWED_COMMANDS.get(role)
    if not commands or pattern is None or not pattern.match(commands[-1]):
        return None
    return shlex.split(commands[-1])[1:]


def role_from_user_data(user_data: str) -> str | None:
    """The role whose allow-listed command the user data runs."""
    return next((role for role in ALLOWED_COMMANDS if command_from_user_data(user_data, role)), None)


def environment_from_user_data(user_data: str) -> dict[str, str]:
    """The allow-listed variables user data exports; an empty value (an unset template parameter)
    leaves the agent's own value in place, and one the shell would expand (`$version`) is not a
    value the agent can know: it is skipped."""
    exported: dict[str, str] = {}
    for line in user_data.splitlines():
        words = shlex.split(line, comments=True) if line.strip().startswith("export ") else []
        for assignment in words[1:]:
            name, _, value = assignment.partition("=")
            if ALLOWED_VARIABLES.match(name) and value and "$" not in value:
                exported[name] = value
    return exported


def instance_environment(
    agent_environment: dict[str, str],
    user_data: str,
    role: str,
    settings: LocalCloudSettings,
    port: int | None = None,
) -> dict[str, str]:
    """What an instance's process sees: the agent's environment, what its user data exports, then
    what the agent keeps for itself whatever the user data says: a server's address, on localhost
    only, on the port the agent gave it (the API port unless said otherwise)."""
    owned = (
        {"ARRIVAL_SERVING_HOST": "127.0.0.1", "ARRIVAL_SERVING_PORT": str(port or settings.api_port)}
        if role == "server"
        else {}
    )
    return {**agent_environment, **environment_from_user_data(user_data), **owned}


_CREDENTIALS_PATH = "iam/security-credentials/"


class _MetadataHandler(BaseHTTPRequestHandler):
    """IMDSv2's two calls boto3 and the worker make: a session token, then metadata paths, among
    them the instance profile role's credentials."""

    server: MetadataStub

    def do_PUT(self) -> None:  # http.server's naming
        self._answer("local-imds-token" if self.path == "/latest/api/token" else None)

    def do_GET(self) -> None:
        path = self.path.removeprefix("/latest/meta-data/")
        credentials = self.server.credentials
        if path.startswith(_CREDENTIALS_PATH) and credentials is not None:
            role = path.removeprefix(_CREDENTIALS_PATH).strip("/")
            if not role:
                self._answer(credentials.role_name)
            else:
                self._answer(credentials.imds_document() if role == credentials.role_name else None)
            return
        self._answer(self.server.metadata.get(path))

    def _answer(self, body: str | None) -> None:
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write((body or "").encode())

    def log_message(self, format: str, *args: Any) -> None:  # keep request logs quiet
        pass


class MetadataStub(ThreadingHTTPServer):
    def __init__(self, metadata: dict[str, str], credentials: RoleCredentials | None = None) -> None:
        """An instance without an instance profile (`credentials` None) gets no credentials, as on EC2."""
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        self.metadata = metadata
        self.credentials = credentials

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _InstanceRoleProvider(CredentialProvider):
    """The instance's role credentials as first in a botocore session's chain (for the log shipper)."""

    METHOD = "arrival-instance-role"

    def __init__(self, credentials: RoleCredentials) -> None:
        super().__init__()
        self._role = credentials

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(
            self._role.botocore_metadata(), self._role.botocore_metadata, self.METHOD
        )


@dataclass
class BootedInstance:
    instance_id: str
    role: str
    process: subprocess.Popen[bytes]
    metadata: MetadataStub
    shipper: LogShipper | None = None

    def stopped(self) -> None:
        """What outlives the process: its metadata stub, and the shipping of its last lines."""
        self.metadata.shutdown()
        if self.shipper is not None:
            self.shipper.stop()


@dataclass(frozen=True)
class Identity:
    """Who an instance is, as the agent sees it."""

    role: str
    stack: str
    user_data: str


@dataclass(frozen=True)
class Installation:
    """What an instance's first boot leaves on its disk: its release, installed, and the unit that
    runs the command from it; a restart or a start after a stop needs nothing else."""

    identity: Identity
    command: list[str]
    release: InstalledRelease
    credentials: RoleCredentials | None


class InstanceAgent:
    def __init__(self, settings: LocalCloudSettings) -> None:
        self.settings = settings
        self.ec2: Any = self._client("ec2")
        self.logs: Any = self._client("logs")
        self.iam: Any = self._client("iam")
        self.sts: Any = self._client("sts")
        self.cloudformation: Any = self._client("cloudformation")
        self.booted: dict[str, BootedInstance] = {}
        self.installed: dict[str, Installation] = {}
        self.restart_at: dict[str, float] = {}
        self.finished: set[str] = set()
        self.server_ports: dict[str, int] = {}  # a server instance's port, from its first boot to its end
        self.listeners: dict[str, socket.socket] = {}  # a server's socket, while its instance runs
        self.follow_at: dict[str, float] = {}  # when to look next for a server's new release
        self.stopping = False

    def _client(self, service: str) -> Any:
        return boto3.client(  # type: ignore[call-overload]
            service,
            endpoint_url=self.settings.aws_endpoint_url,
            region_name=self.settings.region,
            aws_access_key_id="test",
            aws_secret_access_key="test",  # noqa: S106  # LocalStack accepts any credentials
        )

    def _role_client(self, service: str, credentials: RoleCredentials) -> Any:
        """A client that calls as the instance's role, as its process and its CloudWatch agent do."""
        session = botocore.session.get_session()
        session.get_component("credential_provider").insert_before("env", _InstanceRoleProvider(credentials))
        return boto3.session.Session(botocore_session=session).client(  # type: ignore[call-overload]
            service, endpoint_url=self.settings.aws_endpoint_url, region_name=self.settings.region
        )

    def _instances(self) -> list[dict[str, Any]]:
        # Every instance, not only those with a role tag: see _identity.
        reservations = self.ec2.describe_instances()
        return [
            instance for reservation in reservations["Reservations"] for instance in reservation["Instances"]
        ]

    def _environment(self, metadata_url: str) -> dict[str, str]:
        """The agent's environment without its credentials: an instance's process finds its role's
        through IMDS, and neither the agent's keys nor the host's ~/.aws may stand in for them."""
        inherited = {name: value for name, value in os.environ.items() if name not in _HOST_CREDENTIALS}
        no_file = str(self.settings.state_dir / "instances-have-no-aws-files")
        return {
            **inherited,
            "AWS_SHARED_CREDENTIALS_FILE": no_file,
            "AWS_CONFIG_FILE": no_file,
            "AWS_ENDPOINT_URL": self.settings.aws_endpoint_url,
            "AWS_DEFAULT_REGION": self.settings.region,
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": metadata_url,
            "MLFLOW_TRACKING_URI": self.settings.mlflow_url,
            "DVC_NO_ANALYTICS": "1",
        }

    def _identity(self, instance: dict[str, Any]) -> Identity:
        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        attribute = self.ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData"
        )
        encoded = attribute.get("UserData", {}).get("Value", "")
        user_data = base64.b64decode(encoded).decode(errors="replace") if encoded else ""
        # LocalStack's CloudFormation creates an AWS::EC2::Instance without its Tags (the serving
        # instance): such an instance is known by its user data, as EC2 would run it, its role by
        # the allow-listed command it names and its stack by the ARRIVAL_STACK_NAME it exports.
        role = tags.get(ROLE_TAG) or role_from_user_data(user_data) or ""
        stack = tags.get(STACK_TAG) or environment_from_user_data(user_data).get("ARRIVAL_STACK_NAME", "")
        return Identity(role, stack, user_data)

    def _instance_profile(self, instance: dict[str, Any], stack: str) -> str | None:
        """The instance profile (ARN or name) the instance was launched with. LocalStack's EC2 keeps
        it only when RunInstances names it: one from a launch template is read from the template
        (EC2 tags the instance with it), and one of an AWS::EC2::Instance, whose IamInstanceProfile
        and LaunchTemplate LocalStack's CloudFormation drops, from the stack's template."""
        recorded = (instance.get("IamInstanceProfile") or {}).get("Arn")
        if recorded:
            return str(recorded)
        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        if "aws:ec2launchtemplate:id" in tags:
            return self._template_profile(
                tags["aws:ec2launchtemplate:id"], tags.get("aws:ec2launchtemplate:version")
            )
        return self._stack_instance_profile(instance["InstanceId"], stack) if stack else None

    def _template_profile(self, template_id: str, version: str | None) -> str | None:
        versions = self.ec2.describe_launch_template_versions(
            LaunchTemplateId=template_id, Versions=[version or "$Latest"]
        )["LaunchTemplateVersions"]
        profile = versions[0]["LaunchTemplateData"].get("IamInstanceProfile", {}) if versions else {}
        return profile.get("Arn") or profile.get("Name")

    def _stack_instance_profile(self, instance_id: str, stack: str) -> str | None:
        try:
            resources = self.cloudformation.describe_stack_resources(StackName=stack)["StackResources"]
        except ClientError:
            return None
        physical = {resource["LogicalResourceId"]: resource["PhysicalResourceId"] for resource in resources}
        logical = next((name for name, value in physical.items() if value == instance_id), None)
        if logical is None:
            return None
        template = self.cloudformation.get_template(StackName=stack, TemplateStage="Processed")[
            "TemplateBody"
        ]
        properties = (json.loads(template) if isinstance(template, str) else template)["Resources"][logical][
            "Properties"
        ]

        def resolved(value: Any) -> str | None:  # a literal, or a Ref to one of the stack's resources
            if isinstance(value, dict):
                return physical.get(value.get("Ref", ""))
            return str(value) if value else None

        profile = resolved(properties.get("IamInstanceProfile"))
        launch_template = resolved((properties.get("LaunchTemplate") or {}).get("LaunchTemplateId"))
        if profile is None and launch_template is not None:
            profile = self._template_profile(launch_template, None)
        return profile

    def _role_credentials(self, instance: dict[str, Any], stack: str) -> RoleCredentials | None:
        profile = self._instance_profile(instance, stack)
        if profile is None:
            return None
        roles = self.iam.get_instance_profile(InstanceProfileName=profile.rsplit("/", 1)[-1])[
            "InstanceProfile"
        ]["Roles"]
        return RoleCredentials(self.sts, roles[0]["Arn"], instance["InstanceId"]) if roles else None

    def server_port(self, instance_id: str) -> int:
        """The port a server instance answers on: the one it was given at its first boot (a restart or
        a start after a stop takes it back), else the API port if no other server holds it, else a
        free one."""
        if instance_id not in self.server_ports:
            held = {port for other, port in self.server_ports.items() if other != instance_id}
            self.server_ports[instance_id] = (
                self.settings.api_port if self.settings.api_port not in held else free_port()
            )
        return self.server_ports[instance_id]

    def command_for(self, instance_id: str, identity: Identity) -> list[str] | None:
        """The command to boot the instance with; None to leave it as a record (it is then finished)."""
        stacks = self.settings.agent_stacks
        if identity.role not in self.settings.agent_roles or (
            stacks is not None and identity.stack not in stacks
        ):
            LOG.info(
                "instance %s (%s of %s) is only recorded: ARRIVAL_AGENT_ROLES/STACKS",
                instance_id,
                identity.role or "no role",
                identity.stack or "no stack",
            )
            self.finished.add(instance_id)
            return None
        command = command_from_user_data(identity.user_data, identity.role)
        if command is None:
            LOG.warning("instance %s: user data names no allow-listed command; not booting it", instance_id)
            self.finished.add(instance_id)
            return None
        return command

    def boot(self, instance: dict[str, Any]) -> None:
        """The first boot: what user data does, then the unit's first start."""
        instance_id = instance["InstanceId"]
        identity = self._identity(instance)
        command = self.command_for(instance_id, identity)
        if command is None:
            return
        credentials = self._role_credentials(instance, identity.stack)
        if credentials is None:
            LOG.warning(
                "instance %s has no instance profile: its process gets no AWS credentials", instance_id
            )
        try:
            if credentials is None:
                raise ReleaseInstallError("no instance profile: nothing may read the release")
            release = install_release(
                self._role_client("s3", credentials),
                self._release_uri(identity, credentials),
                identity.role,
                self.settings.instance_installs,
            )
        except (ReleaseInstallError, ReleaseError) as error:
            # As on EC2: the user data fails, the instance runs on with nothing started, and the
            # reconciler replaces a trainer that never beats. Its output says why.
            LOG.warning("instance %s: arrival-boot failed: %s", instance_id, error)
            with self._log_path(instance_id).open("a") as log:
                log.write(f"arrival-boot: {error}\n")
            self.finished.add(instance_id)
            return
        self.installed[instance_id] = Installation(identity, command, release, credentials)
        self.start(instance_id)

    def _release_uri(self, identity: Identity, credentials: RoleCredentials) -> str:
        """The release the user data names: its ARRIVAL_RELEASE_URI, or, for the server, the stack's
        ReleaseVersion in ARRIVAL_RELEASE_BUCKET, read with the instance's role as its user data does."""
        exported = environment_from_user_data(identity.user_data)
        if "ARRIVAL_RELEASE_BUCKET" not in exported:
            return exported.get("ARRIVAL_RELEASE_URI", "")
        return self._stack_release(identity, credentials)[1]

    def _stack_release(self, identity: Identity, credentials: RoleCredentials) -> tuple[str, str]:
        """The stack's status, and the URI of the release its ReleaseVersion names in the user data's
        ARRIVAL_RELEASE_BUCKET, read with the instance's role."""
        bucket = environment_from_user_data(identity.user_data).get("ARRIVAL_RELEASE_BUCKET", "")
        try:
            stack = self._role_client("cloudformation", credentials).describe_stacks(StackName=identity.stack)
        except ClientError as error:
            raise ReleaseInstallError(f"cannot read the stack's ReleaseVersion: {error}") from error
        parameters = {
            found["ParameterKey"]: found.get("ParameterValue", "")
            for found in stack["Stacks"][0].get("Parameters", [])
        }
        return stack["Stacks"][0]["StackStatus"], release_uri(bucket, parameters.get("ReleaseVersion", ""))

    def follow_release(self, instance_id: str) -> None:
        """What arrival-boot's timer does on a server (`arrival-boot --follow`): once its stack is
        settled (an update finished, or rolled back) on a release other than the one the server runs,
        install that release and restart the server from it, on the socket the agent holds."""
        installation = self.installed[instance_id]
        identity, credentials = installation.identity, installation.credentials
        if "ARRIVAL_RELEASE_BUCKET" not in environment_from_user_data(identity.user_data) or not credentials:
            return
        try:
            status, uri = self._stack_release(identity, credentials)
            settled = status.endswith("_COMPLETE") and not status.startswith("DELETE")
            if not settled or uri.rsplit("/", 1)[-1] == installation.release.version:
                return
            release = install_release(
                self._role_client("s3", credentials), uri, identity.role, self.settings.instance_installs
            )
        except (ReleaseInstallError, ReleaseError) as error:
            # As the timer's failed run on EC2: the server keeps its release, and the next look retries.
            LOG.warning("instance %s: following its stack's release failed: %s", instance_id, error)
            return
        LOG.info(
            "instance %s: release %s -> %s, restarting its server",
            instance_id,
            installation.release.version,
            release.version,
        )
        self.installed[instance_id] = dataclasses.replace(installation, release=release)
        booted = self.booted.pop(instance_id, None)
        if booted is not None:
            self._halt(booted)  # systemctl restart: the old server drains, then the new one starts
        self.start(instance_id)

    def _log_path(self, instance_id: str) -> Path:
        return self.settings.state_dir / "logs" / f"instance-{instance_id}.log"

    def start(self, instance_id: str) -> None:
        """The unit's start: the command, from the installed release, in the instance's home."""
        installation = self.installed[instance_id]
        identity, credentials = installation.identity, installation.credentials
        self.restart_at.pop(instance_id, None)
        metadata = MetadataStub(
            {"instance-id": instance_id, "placement/region": self.settings.region}, credentials
        )
        threading.Thread(target=metadata.serve_forever, daemon=True).start()
        log_path = self._log_path(instance_id)
        # Made before the process starts, so its first lines are shipped too; with the instance's
        # role, as the CloudWatch agent ships them on EC2.
        group = environment_from_user_data(identity.user_data).get("ARRIVAL_LOG_GROUP")
        shipper = (
            LogShipper(self._role_client("logs", credentials), log_path, group, instance_id)
            if group and credentials is not None
            else None
        )
        home = self.settings.state_dir / "instances" / instance_id
        home.mkdir(parents=True, exist_ok=True)
        port = self.server_port(instance_id) if identity.role == "server" else None
        listener = None
        if port is not None:
            self.ec2.create_tags(Resources=[instance_id], Tags=[{"Key": API_PORT_TAG, "Value": str(port)}])
            listener = self._listener(instance_id, port)
        environment = installation.release.environment(
            instance_environment(
                self._environment(metadata.url),
                identity.user_data,
                identity.role,
                self.settings,
                port,
            )
        )
        command = installation.release.command(installation.command[0], installation.command[1:])
        passed: tuple[int, ...] = ()
        if listener is not None:
            command, passed = handing_over(listener, command), (listener.fileno(),)
            environment["LISTEN_FDS"] = "1"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=home,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=passed,
                preexec_fn=die_with_parent,  # spawned from the agent's only thread
            )
        if shipper is not None:
            shipper.start()
        self.booted[instance_id] = BootedInstance(instance_id, identity.role, process, metadata, shipper)
        LOG.info(
            "started %s (%s, release %s): pid %d",
            instance_id,
            " ".join(installation.command),
            installation.release.version,
            process.pid,
        )

    def _listener(self, instance_id: str, port: int) -> socket.socket:
        """The server's socket, bound at its first start and held until its instance stops or ends."""
        if instance_id not in self.listeners:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(LISTEN_BACKLOG)
            self.listeners[instance_id] = listener
        return self.listeners[instance_id]

    def _close_listener(self, instance_id: str) -> None:
        listener = self.listeners.pop(instance_id, None)
        if listener is not None:
            listener.close()

    def _halt(self, booted: BootedInstance) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(booted.process.pid, signal.SIGTERM)
        try:
            booted.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(booted.process.pid, signal.SIGKILL)
            booted.process.wait()
        booted.stopped()

    def reconcile_once(self) -> None:
        instances = self._instances()
        states = {instance["InstanceId"]: instance["State"]["Name"] for instance in instances}
        for instance_id, booted in list(self.booted.items()):
            state = states.get(instance_id)
            if state not in LIVE:
                LOG.info("instance %s is %s: ending its process", instance_id, state)
                self._halt(booted)
                self._close_listener(instance_id)
            elif booted.process.poll() is not None:
                # The unit's Restart=always: on a running instance, the process comes back. A trainer
                # that ended its own instance is not restarted: the next poll sees it terminated.
                LOG.info(
                    "instance %s: process exited (%s); restarting it in %.0f s",
                    instance_id,
                    booted.process.returncode,
                    RESTART_SECONDS,
                )
                booted.stopped()
                self.restart_at[instance_id] = time.monotonic() + RESTART_SECONDS
            else:
                continue
            del self.booted[instance_id]
        for instance_id, state in states.items():
            if state not in LIVE and state not in STOPPED and instance_id not in self.finished:
                self.installed.pop(instance_id, None)  # terminated: its disk is gone
                self.server_ports.pop(instance_id, None)  # and its address
                self._close_listener(instance_id)
                self.follow_at.pop(instance_id, None)
                self.restart_at.pop(instance_id, None)
                self.finished.add(instance_id)
        now = time.monotonic()
        for instance in instances:
            instance_id = instance["InstanceId"]
            if (
                states[instance_id] not in LIVE
                or instance_id in self.booted
                or instance_id in self.finished
                or self.restart_at.get(instance_id, now) > now
            ):
                continue
            if instance_id in self.installed:
                self.start(instance_id)  # a restart, or a start after a stop: user data does not run again
            else:
                self.boot(instance)
        self._follow_releases(now)

    def _follow_releases(self, now: float) -> None:
        """Each running server looks for its stack's new release every FOLLOW_SECONDS."""
        for instance_id, booted in list(self.booted.items()):
            due = self.follow_at.setdefault(instance_id, now + FOLLOW_SECONDS)
            if booted.role == "server" and due <= now:
                self.follow_at[instance_id] = now + FOLLOW_SECONDS
                self.follow_release(instance_id)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        while not self.stopping:
            try:
                self.reconcile_once()
            except Exception:  # the agent must outlive a failed poll (e.g. LocalStack busy)
                LOG.exception("instance agent poll failed")
            time.sleep(0.3)
        for booted in self.booted.values():
            self._halt(booted)
        for instance_id in list(self.listeners):
            self._close_listener(instance_id)


def handing_over(listener: socket.socket, command: list[str]) -> list[str]:
    """``command``, started with ``listener`` as its descriptor 3 and LISTEN_PID naming its own pid,
    as systemd starts a unit with a socket: the pid is known only in the child, so a shell moves the
    descriptor and sets the pid, then replaces itself with the command (the same pid). bash, not sh:
    Debian's dash cannot name a descriptor above 9."""
    fd = listener.fileno()
    moved = "" if fd == LISTEN_FD else f"exec {LISTEN_FD}<&{fd} {fd}<&-; "
    return ["/bin/bash", "-c", f'{moved}export LISTEN_PID=$$; exec "$0" "$@"', *command]


def agent_service(settings: LocalCloudSettings) -> Service:
    return Service(
        name="instance-agent",
        argv=[sys.executable, "-m", "localcloud.instance_agent"],
        env=dict(os.environ),
        health_url=None,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    InstanceAgent(get_local_cloud_settings()).run()


if __name__ == "__main__":
    main()
