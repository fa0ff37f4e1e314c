"""The lifecycle model's directed rules: whole days of a researcher, each a sequence of
the model's own steps run one after the other, so that every example that draws one goes
deep into a seam the random steps reach only by luck (a delta re-flash after a delta
sync-back, a network mount that ends as a version, an upload cut and resumed).

``Days`` is mixed into the state machine of ``test_lifecycle_model``; it uses that
machine's rules and helpers (``lease``, ``enqueue``, ``agent_step``, ``mount_write``…).
Whatever else the example did before (a lease held by someone else, a deactivated user, a
cancelled deployment) may cut a day short: the promises are checked after it all the same.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import rule

from flashing.models import FINAL_STATES, Deployment

USERS = st.sampled_from(["ann", "bob"])
BOXES = st.sampled_from(["m0", "m1"])
WHICH = st.sampled_from(["system", "data"])
ENDS = ("done", "fails before writing", "fails while writing")


class Days:
    world: Any
    deltas: bool
    failing_while_writing: bool | None

    @rule(who=USERS, box=BOXES, end=st.sampled_from(ENDS))
    def a_researchers_day(self, who: str, box: str, end: str) -> None:
        """The day issue 20 is about, on one machine. It starts clean, without sync (the
        researcher's choice, whatever other setups left there): the system and data laid
        out on one disk (a partition table), then the system and user data on two disks.
        They work (the data changes), rebuild the system (a new version, pinned in the
        setup) and flash again with sync: the data comes back as its changes (a delta
        sync-back) and the new system goes over the old (a delta re-flash); the last agent
        reports ``done``, or fails before it writes (the data it brought back is what the
        disk holds) or while it writes (the disk is forgotten). Each deployment runs
        through as the worker and the agent take their steps."""
        self.lease(who, box, hours=2)
        for kind in ("one disk", "system+data"):
            self.enqueue(who, box, who, kind, sync=kind == "system+data")
            self.runs_through(box, True)
        self.upload_version(who, self.world.images[(who, "system")])
        self.repin(who, who, "system+data")
        self.enqueue(who, box, who, "system+data", sync=True)
        self.deltas = True
        self.failing_while_writing = end == "fails while writing"
        try:
            self.runs_through(box, end == "done")
        finally:
            self.deltas, self.failing_while_writing = False, None

    @rule(who=USERS, box=BOXES, pattern=st.integers(min_value=1, max_value=255))
    def a_day_on_a_network_mount(self, who: str, box: str, pattern: int) -> None:
        """The user data served over the network (NBD) beside the flashed system: the
        researcher flashes "system+mount", the machine writes to its mount, and they
        release the machine; the worker ends the mount, whose changes become the image's
        next version (or the mount says why not: ``Lab.check_mount_outcomes``)."""
        self.lease(who, box, hours=2)
        self.enqueue(who, box, who, "system+mount", sync=True)
        self.runs_through(box, True)
        self.mount_write(box, pattern)
        self.release(who, box)
        self.worker_runs_pending_jobs()

    @rule(who=USERS, which=WHICH, sparse=st.booleans())
    def an_upload_cut_and_resumed(self, who: str, which: str, sparse: bool) -> None:
        """An upload of one's own image whose connection is cut after a part: ``baas image
        push`` (an Android sparse image, decoded as it arrives) or the dashboard's upload
        (the file as it is, kept as sent). It resumes from the offset the server
        acknowledged, sends another part, and completes."""
        upload = self.resumable_start(who, self.world.images[(who, which)], sparse=sparse)
        for action in ("append", "complete"):
            if upload not in self.resumables:
                return  # refused (a deactivated user, a full quota): nothing to resume
            self.resumable_send(upload, action)

    def runs_through(self, box: str, ok: bool, steps: int = 12) -> None:
        """The worker and the machine's agent take turns until its last deployment ends."""
        for _ in range(steps):
            self.worker_runs_pending_jobs()
            last = Deployment.objects.filter(machine__name=box).order_by("-id").first()
            if last is None or last.state in FINAL_STATES:
                return
            self.agent_step(box, ok)
