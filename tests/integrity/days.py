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

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from hypothesis import strategies as st
from hypothesis.stateful import rule

from catalogue.models import ImageFrozen, ImageType
from catalogue.services.lifecycle import temporal_expire
from flashing.models import FINAL_STATES, LIVE_MOUNT_STATES, Deployment, NetworkMount
from tests.integrity.invariants import seen
from tests.integrity.world import after_commit

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
        researcher's choice, whatever other setups left there): the system and user data
        on two disks; then, with sync, the system and data laid out on one disk (a
        partition table), then on two disks again: the data the partition held comes
        back, and the same image's copy on the other disk too (one image, two disks).
        They work (the data changes), rebuild the system (a new version, pinned in the
        setup) and flash again with sync: the data comes back as its changes (a delta
        sync-back) and the new system goes over the old (a delta re-flash); the last agent
        reports ``done``, or fails before it writes (the data it brought back is what the
        disk holds) or while it writes (the disk is forgotten). Each deployment runs
        through as the worker and the agent take their steps."""
        self.lease(who, box, hours=2)
        for kind, sync in (("system+data", False), ("one disk", True), ("system+data", True)):
            self.enqueue(who, box, who, kind, sync=sync)
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

    @rule(
        who=USERS,
        box=BOXES,
        pattern=st.integers(min_value=1, max_value=255),
        temporal=st.booleans(),
    )
    def a_day_on_a_network_mount(
        self, who: str, box: str, pattern: int, temporal: bool = False
    ) -> None:
        """The user data served over the network (NBD) beside the flashed system: the
        researcher flashes "system+mount", the machine writes to its mount, and they
        release the machine; the worker ends the mount, whose changes become the image's
        next version (or the mount says why not: ``Lab.check_mount_outcomes``).

        ``temporal``: meanwhile they take the image out of the setup and make it
        temporal, and beat's expiry runs past its end: it waits for the mount (the mount's
        version is kept: ``pinned-kept``). Once the mount is over, it is user data again,
        in the setup again."""
        self.lease(who, box, hours=2)
        self.enqueue(who, box, who, "system+mount", sync=True)
        self.runs_through(box, True)
        self.mount_write(box, pattern)
        pinned = self.made_temporal_while_mounted(who) if temporal else None
        self.release(who, box)
        self.worker_runs_pending_jobs()
        if pinned is not None:
            self.user_data_again(who, pinned)

    def made_temporal_while_mounted(self, who: str) -> int | None:
        """The mounted data image out of "system+mount", made temporal, expired by beat;
        the version the setup pinned, or None when nothing was changed."""
        image = self.world.images[(who, "data")]
        if not NetworkMount.objects.filter(image=image, state__in=LIVE_MOUNT_STATES).exists():
            return None  # expiry would delete it: the rest of the example needs it
        setup = self.world.setups[(who, "system+mount")]
        frozen = ImageFrozen.objects.filter(setup=setup, image=image).first()
        if frozen is None:
            return None
        url = f"/api/user/{who}/image_setup/{setup.uuid}/images"
        self.http(who, "delete", f"{url}?image={image.uuid}", ok=(204, 401, 403))
        body = {"type": ImageType.TEMPORAL}
        response = self.http(who, "patch", f"/api/image/{image.uuid}", body, ok=(200, 401, 403))
        if response.status_code == 200:
            days = settings.BAAS_TEMPORAL_MAX_DAYS + 1
            with after_commit():
                temporal_expire(now=timezone.now() + timedelta(days=days))
            seen("a mounted image made temporal waited for its mount")
        return frozen.version.number

    def user_data_again(self, who: str, number: int) -> None:
        image = self.world.images[(who, "data")]
        body = {"type": ImageType.USER_DATA}
        self.http(who, "patch", f"/api/image/{image.uuid}", body, ok=(200, 401, 403))
        setup = self.world.setups[(who, "system+mount")]
        url = f"/api/user/{who}/image_setup/{setup.uuid}/images"
        pin = {"image": str(image.uuid), "version": number, "mount": "network", "sync": True}
        self.http(who, "post", url, pin, ok=(201, 401, 403, 409))

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
