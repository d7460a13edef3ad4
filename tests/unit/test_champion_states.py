"""The champion's lifecycle (common/champion.py) as a state machine: hypothesis interleaves the
gate's decisions, a person's approvals and rejections, rollbacks, redelivered training jobs and a
crash after any single write, against a real MLflow registry (SQLite) and moto's S3, and checks the
lifecycle's promises after every step:
- once every interrupted command has been run again and every crashed job redelivered, the champion
  alias and the serving pointer agree, and every version carries its decision;
- a version rolled back away from is never served again unless named with `--to`;
- no change is committed twice (one pointer write per command, however often it is re-run), and a
  decision's event goes out once, or twice only when a crash came between sending it and its tag.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import boto3
import mlflow
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from moto import mock_aws
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from common.adapters import s3, tracking
from common.adapters.tracking import ModelVersion
from common.bundles import ServingPointer, bundle_manifest_key, pointer_key
from common.champion import (
    APPROVAL_MODE,
    AWAITING,
    PROMOTION,
    PUBLISHED,
    REJECTED,
    ROLLBACK_PUBLISHED,
    ROLLED_BACK,
    SUPERSEDED,
    Champions,
    LifecycleError,
    Pointers,
    Registry,
    RolledBack,
    S3Pointers,
)
from tests.fake_lifecycle import Registry as InMemoryRegistry

BUCKET = "lifecycle-models"
MAX_VERSIONS = 6
# CI runs this many examples every time (issue 19's target); ARRIVAL_LIFECYCLE_EXAMPLES runs more.
EXAMPLES = int(os.environ.get("ARRIVAL_LIFECYCLE_EXAMPLES", "500"))
REAL_EXAMPLES = int(os.environ.get("ARRIVAL_LIFECYCLE_REAL_EXAMPLES", "10"))


# Where a step crashes: after its n-th write (every write of the lifecycle counts: the pointer, the
# alias, a tag, an event), or not at all.
CRASH = st.one_of(st.none(), st.integers(min_value=1, max_value=5))


class Crash(Exception):  # noqa: N818  # a process dying, not an error the code could handle
    """The process died right after a write."""


@dataclass
class World:
    """What every example shares: the registry's run, and the crash switch the ports consult."""

    countdown: int | None = None
    # The write after which the last crash came ("publish ModelPromoted 3", "pointer", ...).
    crashed_after: str | None = None
    command: str = ""
    # Commits so far, and the commit count at each command's last commit: a command run again may
    # commit again only if another change was committed since its own (then it is a new change).
    commits: int = 0
    last_commit_of: dict[str, int] = field(default_factory=dict)
    committed_twice: list[str] = field(default_factory=list)
    # Every pointer written: each change it committed must be carried out to the end.
    history: list[ServingPointer] = field(default_factory=list)
    writes: int = 0

    def committed(self, body: bytes) -> None:
        self.history.append(ServingPointer.model_validate_json(body))
        if self.last_commit_of.get(self.command) == self.commits:
            self.committed_twice.append(self.command)
        self.commits += 1
        self.last_commit_of[self.command] = self.commits

    def wrote(self, what: str) -> None:
        self.writes += 1
        if self.countdown is None:
            return
        self.countdown -= 1
        if self.countdown == 0:
            self.countdown, self.crashed_after = None, what
            raise Crash(what)


class CrashingRegistry:
    """A registry, with a crash after any write when the world says so."""

    def __init__(self, world: World, registry: Registry) -> None:
        self.world, self.registry = world, registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self.registry, name)

    def move_champion(self, name: str, model_version: str) -> None:
        self.registry.move_champion(name, model_version)
        self.world.wrote("alias")

    def tag_version(self, name: str, model_version: str, key: str, value: str) -> None:
        self.registry.tag_version(name, model_version, key, value)
        self.world.wrote(f"tag {key}")

    def untag_version(self, name: str, model_version: str, key: str) -> None:
        self.registry.untag_version(name, model_version, key)
        self.world.wrote(f"untag {key}")


class CrashingPointers:
    """Serving pointers, counting each command's commits, with a crash after a write."""

    def __init__(self, world: World, pointers: Pointers) -> None:
        self.world, self.pointers = world, pointers

    def read(self, model: str) -> tuple[bytes, str] | None:
        return self.pointers.read(model)

    def bundle_exists(self, model: str, version: str) -> bool:
        return self.pointers.bundle_exists(model, version)

    def write(self, model: str, body: bytes, etag: str | None) -> str:
        written = self.pointers.write(model, body, etag)
        self.world.committed(body)
        self.world.wrote("pointer")
        return written


class Backend(Protocol):
    """Where an example's registry and pointers live."""

    registry: Registry
    pointers: Pointers

    def register(self, model: str, number: str, tags: dict[str, str]) -> None: ...
    def publish_bundle(self, model: str, number: str) -> None: ...
    def pointer(self, model: str) -> bytes | None: ...


class RealStores:
    """MLflow's own registry (SQLite) and moto's S3, shared by every example (a model each)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.registry: Registry = tracking
        self.pointers: Pointers = S3Pointers(BUCKET)

    def register(self, model: str, number: str, tags: dict[str, str]) -> None:
        if number == "1":
            tracking.client().create_registered_model(model)
        created = tracking.client().create_model_version(model, "s3://nowhere", self.run_id, tags=tags)
        assert str(created.version) == number

    def publish_bundle(self, model: str, number: str) -> None:
        s3.put_bytes(BUCKET, bundle_manifest_key(model, number), b"{}")

    def pointer(self, model: str) -> bytes | None:
        # From moto's store itself: a checker reading through boto3 would cost as much as the
        # lifecycle's own reads, most of this test's time.
        stored = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(BUCKET, pointer_key(model))
        return bytes(stored.value) if stored else None


class BundlesInMemory(InMemoryRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.published: set[str] = set()

    def bundle_exists(self, model: str, version: str) -> bool:
        return version in self.published


class MemoryStores:
    """The in-memory ports of tests/fake_lifecycle.py, new for each example."""

    def __init__(self) -> None:
        self.fake = BundlesInMemory()
        self.registry: Registry = self.fake
        self.pointers: Pointers = self.fake

    def register(self, model: str, number: str, tags: dict[str, str]) -> None:
        self.fake.add(number, **tags)

    def publish_bundle(self, model: str, number: str) -> None:
        self.fake.published.add(number)

    def pointer(self, model: str) -> bytes | None:
        return self.fake.pointer_body[0] if self.fake.pointer_body else None


@pytest.fixture(scope="module")
def real_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStores]:
    # /dev/shm when there is one: the registry's SQLite file is written on every tag.
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch, mock_aws():
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        tracking.client.cache_clear()
        s3.s3_client.cache_clear()
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        experiment = tracking.client().create_experiment("lifecycle")
        run = tracking.client().create_run(experiment, tags={"lineage.sources": "[]"})
        yield RealStores(run.info.run_id)
        tracking.client.cache_clear()
        s3.s3_client.cache_clear()
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    shutil.rmtree(folder, ignore_errors=True)


class ChampionLifecycle(RuleBasedStateMachine):
    # Set by each test: the stores of every example (None: new in-memory ones for each).
    stores: RealStores | None = None

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.backend: Backend = self.stores or MemoryStores()
        self.model = f"m-{uuid.uuid4().hex[:12]}"
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.champions = Champions(
            CrashingRegistry(self.world, self.backend.registry),
            CrashingPointers(self.world, self.backend.pointers),
            self.publish,
        )
        self.versions = 0
        # Commands and jobs a crash cut short: each is run again (the person, or SQS's redelivery).
        self.interrupted: list[tuple[int, str, str | None]] = []
        self.invocations = 0
        self.crashed_jobs: set[str] = set()
        # Versions rolled back away from and not named with --to since.
        self.pulled: set[str] = set()
        # Events a crash may have doubled: sent, then the crash before the tag saying so.
        self.doubled: Counter[tuple[str, str]] = Counter()
        # The world's write count when the invariants last read the registry: nothing changed since.
        self.checked_at_write = -1
        # Versions that passed the gate under manual approval: the ones worth approving.
        self.passed_manual: list[str] = []

    def publish(self, detail_type: str, detail: dict[str, Any]) -> None:
        self.events.append((detail_type, detail))
        self.world.wrote(f"publish {detail_type} {detail['version']}")

    # -- what runs, each under a name of its own so its commits can be counted -----------------

    def _run(self, key: str, action: Callable[[], Any]) -> tuple[str, Any]:
        """Runs one attempt of a command or job (`key` names it across its attempts): "done" with
        what it returned, "refused" (a LifecycleError), or "crashed"."""
        self.world.command = key
        try:
            return "done", action()
        except Crash:
            published = (self.world.crashed_after or "").split()
            if published[0] == "publish":
                self.doubled[(published[1], published[2])] += 1
            return "crashed", None
        except LifecycleError:
            return "refused", None

    def _command(
        self, name: str, version: str | None, crash: int | None, invocation: int | None = None
    ) -> None:
        """A person's command (crashing after its `crash`-th write, if given); one cut short is run
        again later, with the same arguments."""
        self.world.countdown = crash
        champions, model = self.champions, self.model
        actions: dict[str, Callable[[], Any]] = {
            "approve": lambda: champions.approve(model, str(version), "alice"),
            "reject": lambda: champions.reject(model, str(version), "not now", "bob"),
            "rollback": lambda: champions.rollback(model, version, "carol"),
        }
        if invocation is None:
            self.invocations += 1
            invocation = self.invocations
        if name == "rollback" and version is not None:
            self.pulled.discard(version)  # named on purpose: it may serve again
        outcome, done = self._run(f"{name} #{invocation}", actions[name])
        if isinstance(done, RolledBack) and done.from_version not in (None, done.to_version):
            self.pulled.add(str(done.from_version))
        entry = (invocation, name, version)
        if outcome == "crashed" and entry not in self.interrupted:
            self.interrupted.append(entry)
        elif outcome != "crashed" and entry in self.interrupted:
            self.interrupted.remove(entry)

    def _job(self, number: str, action: Callable[[], Any]) -> None:
        outcome, _ = self._run(f"job {number}", action)
        if outcome == "crashed":
            self.crashed_jobs.add(number)
        else:
            self.crashed_jobs.discard(number)

    def _publish_bundle(self, version: ModelVersion | str) -> None:
        self.backend.publish_bundle(self.model, version if isinstance(version, str) else version.version)

    # -- rules -----------------------------------------------------------------------------------

    # A model's jobs are one FIFO group: a crashed job comes back before the next one is trained.
    @precondition(lambda self: self.versions < MAX_VERSIONS and not self.crashed_jobs)
    @rule(
        passes=st.sampled_from([True, True, False]), manual=st.sampled_from([False, False, True]), crash=CRASH
    )
    def train(self, passes: bool, manual: bool, crash: int | None) -> None:
        """What the trainer does: register with the gate's tags, publish the bundle if it passed, and
        have the lifecycle carry out the decision."""
        self.versions += 1
        number = str(self.versions)
        champion = self._pointer()
        reason = "beats the champion" if passes else "worse than the champion"
        mode = "manual" if manual else "auto"
        tags = {
            "accepted_list_hash": f"list-{number}",
            "gate.decision": "promote" if passes else "reject",
            "gate.reason": reason,
            APPROVAL_MODE: mode,
            "gate.champion_version": champion.version if champion else "",
        }
        self.backend.register(self.model, number, tags)
        if passes:
            self._publish_bundle(number)
            if manual:
                self.passed_manual.append(number)
        detail = {"name": self.model, "version": number, "reason": reason}
        self.world.countdown = crash
        self._job(number, lambda: self.champions.decide(self.model, number, passes, reason, detail, mode))

    @precondition(lambda self: bool(self.crashed_jobs))
    @rule(data=st.data(), crash=CRASH)
    def redeliver_a_job(self, data: st.DataObject, crash: int | None) -> None:
        number = data.draw(st.sampled_from(sorted(self.crashed_jobs)))
        list_hash = f"list-{number}"
        self.world.countdown = crash
        self._job(number, lambda: self.champions.settle_job(self.model, list_hash, self._publish_bundle))

    @precondition(lambda self: bool(self.passed_manual))
    @rule(data=st.data(), crash=CRASH)
    def approve(self, data: st.DataObject, crash: int | None) -> None:
        self._command("approve", data.draw(st.sampled_from(self.passed_manual)), crash)

    @precondition(lambda self: bool(self.passed_manual))
    @rule(data=st.data(), crash=CRASH)
    def reject(self, data: st.DataObject, crash: int | None) -> None:
        self._command("reject", data.draw(st.sampled_from(self.passed_manual)), crash)

    @precondition(lambda self: self.versions > 1)
    @rule(crash=CRASH)
    def rollback(self, crash: int | None) -> None:
        self._command("rollback", None, crash)

    @precondition(lambda self: self.versions > 1)
    @rule(data=st.data(), crash=CRASH)
    def rollback_to(self, data: st.DataObject, crash: int | None) -> None:
        self._command("rollback", str(data.draw(st.integers(1, self.versions))), crash)

    @precondition(lambda self: bool(self.interrupted))
    @rule(crash=CRASH)
    def run_the_interrupted_command_again(self, crash: int | None) -> None:
        invocation, name, version = self.interrupted[0]
        self._command(name, version, crash, invocation)

    # -- invariants ------------------------------------------------------------------------------

    def _pointer(self) -> ServingPointer | None:
        stored = self.backend.pointer(self.model)
        return ServingPointer.model_validate_json(stored) if stored else None

    @invariant()
    def the_lifecycle_keeps_its_promises(self) -> None:
        pointer = self._pointer()
        # A version rolled back away from is not served, unless named since with --to.
        assert pointer is None or pointer.version not in self.pulled, (pointer, self.pulled)
        # No change is committed twice, however often its command runs again.
        assert not self.world.committed_twice, self.world.committed_twice
        if not (self.interrupted or self.crashed_jobs) and self.checked_at_write != self.world.writes:
            self.checked_at_write = self.world.writes
            self._everything_finished_agrees(pointer)

    def _everything_finished_agrees(self, pointer: ServingPointer | None) -> None:
        """Alias and pointer agree, every version carries one decision, its event went out (twice
        only after a crash between sending it and its tag), and the pointer's change is complete."""
        registry = self.backend.registry
        champion = registry.champion(self.model)
        assert (champion.version if champion else None) == (pointer.version if pointer else None)
        versions = {version.version: version.tags for version in registry.versions_of(self.model)}
        sent = Counter((detail_type, detail["version"]) for detail_type, detail in self.events)
        for number, tags in versions.items():
            assert any(tag in tags for tag in (PROMOTION, REJECTED, AWAITING, SUPERSEDED)), (number, tags)
            assert not (PROMOTION in tags and REJECTED in tags), (number, tags)
            for tag, detail_type in ((PROMOTION, "ModelPromoted"), (REJECTED, "ModelRejected")):
                if tag in tags:
                    assert tags.get(PUBLISHED) == detail_type, (number, tags)
                    assert 1 <= sent[(detail_type, number)] <= 1 + self.doubled[(detail_type, number)]
        for committed in self.world.history:  # every change carried out, whatever came after it
            kind = committed.change.kind if committed.change else None
            if kind in ("promotion", "approval"):
                assert PROMOTION in versions[committed.version], committed
                assert sent[("ModelPromoted", committed.version)] >= 1, committed
            if kind == "rollback":
                assert sent[("ModelRolledBack", committed.version)] >= 1, committed
        if pointer is not None and pointer.change is not None:
            served = versions[pointer.version]
            if pointer.change.kind == "rollback":
                assert served.get(ROLLBACK_PUBLISHED) == str(pointer.generation), served
                if pointer.change.from_version:
                    assert ROLLED_BACK in versions[pointer.change.from_version]
            else:
                assert served.get(PROMOTION) == pointer.change.reason, served


def _run_the_machine(stores: RealStores | None, examples: int) -> None:
    ChampionLifecycle.stores = stores
    run_state_machine_as_test(
        ChampionLifecycle,
        settings=settings(
            max_examples=examples,
            stateful_step_count=15,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_the_lifecycle_keeps_its_promises_through_any_crash() -> None:
    _run_the_machine(None, EXAMPLES)


def test_the_lifecycle_keeps_them_on_mlflows_registry_and_s3(real_stores: RealStores) -> None:
    """The same machine on the real stores: fewer examples, since each costs about 0.3 s of MLflow
    and botocore calls; they show the in-memory ports behave as the real ones do."""
    _run_the_machine(real_stores, REAL_EXAMPLES)
