"""A model of BAAS's lifecycle: random sequences of what people, scripts, agents and
the worker do, with BAAS's promises checked after every step (issue 16).

The rules drive the real thing: HTTP through DRF's ``APIClient`` with real bearer
tokens (people and scripts) and the agent's own tokens, on PostgreSQL, with real
files under a fresh ``BAAS_DISK_ROOT`` and real NBD exports (``qemu-nbd``) for
network mounts. Celery jobs wait in an in-memory broker until a rule says "the worker
runs its pending jobs"; beat jobs (lease expiry, the watchdog) are rules that move
the clock by passing ``now=``. Administrators' settings (a power command) and
Django admin actions (deactivating a user) go through the services.

Each promise has a name, printed with its failure (``[serving] …``):

* ``serving``: a machine gets a boot token, instructions or image bytes only for a
  running deployment of its current lessee (or an administrator), while the lease lasts;
* ``one-running``: at most one deployment per machine is past ``queued`` and unfinished;
* ``dead-token``: a token of a finished deployment, an ended lease or an older attempt
  gets 401 (410: the agent token of a finished deployment) and changes nothing;
* ``finished-or-leased``: every deployment is finished or belongs to a live lease;
  ``plain-reasons``: with a reason in plain text (no HTML, no traceback);
* ``cancel-any-state``: its requester or an administrator cancels it in any state;
  ``manual-boot-owner``: only they, or the holder of its own live lease, boot it again;
* ``pinned-kept``: a version an unfinished deployment or a live mount uses stays;
* ``no-data-lost``: changed user data is brought back (sync, network mount) before a
  disk is overwritten, or a deployment says why not; the base version stays untouched;
* ``synced-is-the-disk``: user data brought back as its changes against the disk's base
  version (a delta upload) is a version holding the disk's bytes, its base recorded;
* ``numbering`` and ``files-match-rows``: versions 1, 2, 3… whatever a crash left,
  and the files under the image root are exactly the versions' (no ``.part`` left);
* ``one-token-per-attempt``, ``one-checkin-per-attempt``, ``bytes-to-bound-agent``: a
  boot attempt mints one boot token, binds one agent, and only that agent gets bytes;
* ``delta-from-record`` and ``disk-records``: a write carries a delta (a delta re-flash)
  only from the version recorded on its disk; a done deployment records what it wrote
  (after a delta, the new version), one that failed while writing forgets it (with the
  partitions of a whole disk and the whole disk of a partition), and a disk brought back
  and not written since holds the version it came back as (``disks.py``);
* ``delta-is-the-difference``: the recorded version with a delta's ranges, blocks and
  zeros applied is the version written, byte for byte (``disks.py``);
* ``disk-records-nest``: a setup composing one disk (a partition table, the system on
  one partition, user data on another) is flashed and brought back like the others;
  a partition's recorded image and its whole disk's come from one deployment, so a
  write over a whole disk never leaves a stale partition to sync back;
* ``no-5xx`` and ``no-job-crash``: no request answers 5xx or HTML, no job crashes;
* ``resumable-bytes``, ``resumable-quota``, ``resumed-is-the-file``, ``uploads-private``:
  an unfinished resumable upload's acknowledged bytes are on disk (as sent, or for an
  Android sparse image decoded into the raw image up to its checkpoint) and count in its
  owner's quota; expiry (beat), abandoning and completing leave no bytes and count for nothing; a
  completed one is a normal version (numbered, its file matching its row) of the very bytes
  sent; another person's upload answers 404 and does not change.

Each Hypothesis example runs in a savepoint of the test's transaction that its
``teardown`` rolls back, with its own image root: examples do not see each other.

Profiles (``BAAS_MODEL_PROFILE``):

* ``ci`` (default): a fixed seed (``derandomize``), bounded so that a passing run takes
  about four minutes on two cores; a failure is reported as found, not shrunk. The same
  examples in a run of this module alone and in the whole suite (``fixed_examples``);
  ``BAAS_MODEL_TRACE=FILE`` writes what each example did, to compare two runs;
* ``shrink``: the same examples, a failure shrunk to its shortest sequence (minutes);
* ``long``: random seeds, ``BAAS_MODEL_EXAMPLES`` examples (default 500) of at most
  ``BAAS_MODEL_STEPS`` steps (default 60); run it for as long as you like::

      BAAS_MODEL_PROFILE=long BAAS_MODEL_EXAMPLES=5000 pytest tests/integrity

  ``BAAS_MODEL_SHRINK=0`` reports a failure without shrinking it; ``BAAS_MODEL_ONLY=serving``
  checks one promise alone, ``BAAS_MODEL_IGNORE=a,b`` all but those (to find what a
  frequent failure hides).

Decision, for administrators: a deployment an administrator queues on a machine
they do not lease has no lease; it is legitimate until it finishes or someone
cancels it, and the end of the machine's lease (someone else's) leaves it alone.
A deployment queued without ``sync`` may overwrite changed user data: whoever queued
it chose so.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from flashing import nbd
from flashing.models import (
    FINAL_STATES,
    Deployment,
    Lease,
    Machine,
    NetworkMount,
)
from flashing.services.leases import leases_expire
from flashing.services.pipeline import deployments_watchdog
from tests.integrity import invariants
from tests.integrity.agents import Agents
from tests.integrity.changes import Changes
from tests.integrity.days import BOXES, USERS, WHICH, Days
from tests.integrity.invariants import promise
from tests.integrity.lab import Lab
from tests.integrity.machine import INDEX, MachineSide
from tests.integrity.world import (
    SETUPS,
    World,
    after_commit,
    forget_pending_jobs,
    run_pending_jobs,
)

COMMON = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}
CI = {"derandomize": True, "max_examples": 40, "stateful_step_count": 60, **COMMON}
# Shrinking takes minutes per failure: CI reports the failing sequence as found, and the
# ``shrink`` profile replays the same examples and shrinks it.
settings.register_profile(
    "ci",
    phases=[p for p in Phase if p != Phase.shrink],
    report_multiple_bugs=False,
    **CI,
)
settings.register_profile("shrink", **CI)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("BAAS_MODEL_EXAMPLES", "500")),
    stateful_step_count=int(os.environ.get("BAAS_MODEL_STEPS", "60")),
    phases=[p for p in Phase if p != Phase.shrink or os.environ.get("BAAS_MODEL_SHRINK") != "0"],
    **COMMON,
)
PROFILE_NAME = os.environ.get("BAAS_MODEL_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)
# How deep the ``ci`` profile's fixed examples must go: a change to the rules that makes
# them stop short of these would leave the promises about them unchecked in CI.
CI_REACHES = {
    "an agent checked in",
    "an agent got its instructions",
    "an agent wrote a partition table",
    "a deployment is done",
    "a deployment is failed",
    "resumable completed",
    "resumable completed, raw: kept as sent",
    "resumable started, sparse",
    "resumable completed, sparse: decoded as it arrived",
    "a version read back",
    "an instruction carried a delta",  # a delta re-flash
    "an agent brought user data back as its changes",  # a delta sync-back
    # A researcher's day flashes its two disks with sync: the user data the "one disk"
    # flash left on /dev/sda2 comes back, and the same image's copy an earlier day left
    # on /dev/sdb too, each as a version (one image, two disks, reports that name images).
    "an agent brought one image back from two disks",
    # The worker runs every queue: a mount starts, the machine writes to it, and it ends
    # as a version (the seam of a network mount beside a flashed image).
    "a changed network mount ended",
    "a mounted image made temporal waited for its mount",
    # A flash that fails while it writes: what its disks held is forgotten.
    "a failed flash forgot its disks",
    # A flash that fails after its sync and before it writes: the disks it was to write
    # hold what came back, and are recorded so.
    "a disk brought back, then not written, holds what came back",
    "a disk brought back is recorded as holding its version",
}
# Hypothesis derives the ci profile's fixed seed from the source of ``Lifecycle``: any
# edit to the class, a docstring included, draws other examples; check CI_REACHES after.

PEOPLE = st.sampled_from(["ann", "bob", "root"])
RESUMABLE = st.sampled_from(
    ["start", "append", "complete", "complete", "abandon", "intrude", "expire"]
)


class Lifecycle(Lab, Changes, Days, MachineSide, RuleBasedStateMachine):
    """The rules (a machine's in ``MachineSide``); the bookkeeping and HTTP helpers are in
    ``Lab``."""

    base: Path  # set by the test: where each example's files go

    def __init__(self) -> None:
        super().__init__()
        invariants.trace("--- an example")
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self.root = Path(tempfile.mkdtemp(dir=self.base))
        first = random.Random(str(self.root)).randrange(20000, 60000, 100)  # noqa: S311
        self._settings = override_settings(
            BAAS_DISK_ROOT=self.root / "disk",
            BAAS_BOOT_CACHE_DIR=self.root / "boot-cache",
            BAAS_NBD_DIR=self.root / "nbd",
            BAAS_NBD_BIND="127.0.0.1",
            BAAS_NBD_HOST="",
            BAAS_NBD_PORTS=f"{first}-{first + 99}",
            BAAS_NBD_TLS_PSK=False,
            BAAS_DEPLOY_RETRIES=1,
            BAAS_PUBLIC_URL="http://baas.test",
        )
        self._settings.enable()
        (self.root / "disk").mkdir()
        cache.clear()
        forget_pending_jobs()
        with after_commit():
            self.world = World(token_file=self.root / "power-tokens")
        self.admin_requested: set[int] = set()
        self.agents = Agents(self.admin_requested)
        self.strays: set[Path] = set()
        self.changed_mounts: dict[int, str] = {}  # mount -> base version's SHA-256
        self.resumables: list = []

    def teardown(self) -> None:
        for mount in NetworkMount.objects.exclude(pid=None):
            nbd.server_stop(pid=mount.pid, overlay=Path(mount.directory) / nbd.OVERLAY)
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)
        self._settings.disable()
        shutil.rmtree(self.root, ignore_errors=True)

    @initialize(who=USERS, box=BOXES, kind=st.sampled_from(SETUPS))
    def a_user_flashes_a_machine(self, who: str, box: str, kind: str) -> None:
        """Every example starts from a lease with a deployment queued: the common case."""
        self.lease(who, box, hours=2)
        self.enqueue(who, box, who, kind, sync=True)
        self.worker_runs_pending_jobs()

    # --- Leases ------------------------------------------------------------------------

    @rule(who=PEOPLE, box=BOXES, hours=st.integers(min_value=1, max_value=4))
    def lease(self, who: str, box: str, hours: int) -> None:
        """Lease a machine, or extend one's lease (409 when someone else holds it)."""
        mac = self.world.boxes[box].mac
        self.http(who, "post", f"/api/machine/{mac}/lease", {"hours": hours}, ok=(200, 201, 409))

    @rule(who=PEOPLE, box=BOXES)
    def release(self, who: str, box: str) -> None:
        mac = self.world.boxes[box].mac
        self.http(who, "delete", f"/api/machine/{mac}/lease", ok=(204, 403, 404))

    @rule(box=BOXES)
    def lease_expires(self, box: str) -> None:
        """The clock passes the lease's end; beat's ``leases_expire`` runs."""
        lease = Lease.objects.filter(machine__name=box, ended_at=None).first()
        if lease is not None:
            with after_commit():
                leases_expire(now=lease.ends_at + timedelta(seconds=1))

    # --- Deployments ---------------------------------------------------------------------

    @rule(who=PEOPLE, box=BOXES, owner=USERS, kind=st.sampled_from(SETUPS), sync=st.booleans())
    def enqueue(self, who: str, box: str, owner: str, kind: str, sync: bool) -> None:
        setup = self.world.setups[(owner, kind)]
        mac = self.world.boxes[box].mac
        body = {"setup": str(setup.uuid), "sync": sync}
        response = self.http(who, "post", f"/api/machine/{mac}/boot", body, ok=(201, 400, 403, 409))
        if response.status_code == 201:
            deployment = Deployment.objects.get(pk=response.json()["id"])
            if deployment.lease_id is None and self.world.people[who].user.is_administrator:
                self.admin_requested.add(deployment.pk)

    @precondition(lambda self: Deployment.objects.exists())
    @rule(who=PEOPLE, index=INDEX)
    def cancel(self, who: str, index: int) -> None:
        """Cancel at any state: 200 for its requester or an administrator until it finishes."""
        deployments = list(Deployment.objects.order_by("id"))
        if not deployments:
            return
        deployment = deployments[index % len(deployments)]
        person = self.world.people[who].user
        person.refresh_from_db()
        url = f"/api/deployment/{deployment.pk}/cancel"
        response = self.http(who, "post", url, ok=(200, 403, 404, 409))
        mine = person.is_active and (
            deployment.requested_by_id == person.pk or person.is_administrator
        )
        if mine and deployment.state not in FINAL_STATES:
            promise(
                "cancel-any-state",
                response.status_code == 200,
                f"{who} could not cancel their {deployment.state} deployment "
                f"#{deployment.pk}: {response.status_code} {response.content[:300]!r}",
            )
        if response.status_code == 200:
            assert Deployment.objects.get(pk=deployment.pk).state == "cancelled"

    @precondition(lambda self: Deployment.objects.exists())
    @rule(who=PEOPLE, index=INDEX)
    def boot_again(self, who: str, index: int) -> None:
        """A manual boot: a new armed attempt, only for the deployment's own people."""
        deployments = list(Deployment.objects.order_by("id"))
        deployment = deployments[index % len(deployments)]
        person = self.world.people[who].user
        person.refresh_from_db()
        url = f"/api/deployment/{deployment.pk}/boot-again"
        response = self.http(who, "post", url, ok=(200, 403, 404, 409))
        own_lease = Lease.objects.filter(pk=deployment.lease_id, ended_at=None, user=person)
        entitled = person.is_active and (
            deployment.requested_by_id == person.pk or person.is_administrator or own_lease.exists()
        )
        after = Deployment.objects.get(pk=deployment.pk)
        promise(
            "manual-boot-owner",
            entitled or (response.status_code != 200 and after.attempt == deployment.attempt),
            f"{who} booted #{deployment.pk} again, which is not theirs: {response.status_code}",
        )

    @rule()
    def worker_runs_pending_jobs(self) -> None:
        self.run_jobs(run_pending_jobs())

    @rule(seconds=st.sampled_from([0, 60, 3600]))
    def watchdog(self, seconds: int) -> None:
        """Beat's watchdog, the clock moved past the boot and progress timeouts (or not)."""
        late = max(django_settings.BAAS_BOOT_TIMEOUT, django_settings.BAAS_PROGRESS_TIMEOUT)
        now = timezone.now() + timedelta(seconds=late + seconds if seconds else 0)
        with after_commit():
            deployments_watchdog(now=now)

    @rule(ok=st.booleans())
    def power_driver(self, ok: bool) -> None:
        """An administrator's power command for m1 works, or fails (the BMC is down)."""
        Machine.objects.filter(name="m1").update(power_settings=self.world.power(ok=ok))

    @rule(
        change=st.one_of(
            st.tuples(st.just("upload"), PEOPLE, USERS, WHICH),
            st.tuples(st.just("crash_leaves_a_file"), USERS, WHICH),
            st.tuples(st.just("retention"), PEOPLE, USERS, WHICH, st.sampled_from([1, 2, None])),
            st.tuples(st.just("setup_edit"), PEOPLE, USERS, st.sampled_from(SETUPS)),
        )
    )
    def catalogue_change(self, change: tuple) -> None:
        """Someone uploads, a crash leaves a file, retention changes, a setup is edited."""
        getattr(self, change[0])(*change[1:])

    @rule(who=PEOPLE, owner=USERS, which=WHICH, action=RESUMABLE, index=INDEX)
    def resumable_upload(self, who: str, owner: str, which: str, action: str, index: int) -> None:
        """A resumable upload starts, goes on, completes, is abandoned or poked by someone
        else, or beat expires the unfinished ones (``Changes.resumable``)."""
        self.resumable(who, owner, which, action, index)

    @rule(
        change=st.one_of(
            st.tuples(st.just("role_change"), st.booleans()),
            st.tuples(st.just("token_revoked"), PEOPLE),
            st.tuples(st.just("deactivation"), USERS, st.booleans()),
        )
    )
    def people_change(self, change: tuple) -> None:
        """An administrator changes bob's role or (de)activates a user; a token is revoked."""
        getattr(self, change[0])(*change[1:])

    # --- After every step ---------------------------------------------------------------

    @invariant()
    def promises_hold(self) -> None:
        invariants.check_one_running_per_machine()
        invariants.check_deployments_finished_or_leased(self.admin_requested)
        invariants.check_reasons_are_plain()
        invariants.check_pinned_versions_kept()
        invariants.check_numbering()
        invariants.check_files_match_rows(self.strays)
        invariants.check_resumable_uploads()
        invariants.check_disk_records_nest()
        invariants.check_versions_read_back()
        self.check_mount_outcomes()
        self.probe_dead_tokens()


@pytest.fixture
def fixed_examples(monkeypatch):
    """The fixed-seed profiles draw the same examples whatever else the run imported.

    Now and then Hypothesis draws a literal constant of the project's modules loaded so
    far (``providers._get_local_constants``) instead of a random value: a full run, which
    has imported every test module, drew other ci examples than a run of this module
    alone, and they missed ``CI_REACHES``. Here the model draws without them.
    """
    if PROFILE_NAME not in ("ci", "shrink"):
        yield
        return
    from hypothesis.internal.conjecture import providers

    monkeypatch.setattr(providers, "_get_local_constants", providers.Constants)
    providers.CONSTANTS_CACHE.cache.clear()  # values chosen with the constants seen so far
    yield
    providers.CONSTANTS_CACHE.cache.clear()


# A file a crashed download left open is closed whenever the garbage collector runs: a
# warning then would fail a random later step, and Hypothesis could not replay it.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.django_db
def test_every_sequence_keeps_baas_promises(tmp_path, settings, fixed_examples):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    Lifecycle.base = tmp_path
    invariants.SEEN.clear()
    try:
        run_state_machine_as_test(Lifecycle, settings=PROFILE)
    finally:
        print("How far the examples went:", dict(invariants.SEEN))
        gc.collect()  # files a crashed download left open are closed here, not in a later test
    if PROFILE_NAME == "ci":
        missed = CI_REACHES - set(invariants.SEEN)
        assert not missed, f"The ci examples no longer reach: {sorted(missed)}"
