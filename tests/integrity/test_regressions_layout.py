"""The lifecycle model's "one disk" setup, straight-line: a table flashed, then a whole disk.

Same world and hands as ``test_regressions``. Before a write over a whole disk forgot
what its partitions held, the second flash left /dev/sda2 recorded as ann's user data
while /dev/sda held the system image: a later sync would have uploaded the system's
bytes as her data (``disk-records-nest``).
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlencode

import pytest

from catalogue.models import Version
from diskimage import gpt
from flashing.models import Deployment, DeploymentState, DiskContent
from tests.integrity import invariants
from tests.integrity.test_regressions import (
    boot_script,
    call,
    check_in,
    lease_and_flash,
    token_of,
    world,  # noqa: F401 - the fixture
)
from tests.integrity.world import GiB, after_commit, bearer, content, run_pending_jobs

pytestmark = pytest.mark.django_db


def agent_finishes(world, box: str, deployment, *, kept: bool = False) -> dict:  # noqa: F811
    """The agent checks in, reads its instructions, reports progress and success; ``kept``:
    it found each partition table already on its disk."""
    secret = check_in(world, box, token_of(boot_script(world, box))).json()["token"]
    instructions = call(world, None, "get", "/api/agent/instructions", secret=secret).json()
    for entry in instructions["write"]:
        body = {"image": entry["image"], "phase": "verifying", "bytes_done": 1, "bytes_total": 1}
        call(world, None, "post", "/api/agent/progress", body, secret=secret)
    tables = []
    for table in instructions["layouts"]:
        specs = [gpt.Spec(p["label"], p["size"], p["type"]) for p in table["partitions"]]
        placed = [p.as_json() for p in gpt.plan(GiB, specs)]
        tables.append({"disk": table["disk"], "created": not kept, "partitions": placed})
    written = [
        {k: e[k] for k in ("image", "version", "disk", "sha256")} for e in instructions["write"]
    ]
    body = {"state": "done", "written": written, "synced": [], "layouts": tables}
    response = call(world, None, "post", "/api/agent/result", body, secret=secret)
    assert response.json() == {"state": "done"}, response.content
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.DONE
    run_pending_jobs()
    return instructions


def test_a_whole_disk_flashed_over_a_composed_one_leaves_no_partition_record(world):  # noqa: F811
    first = lease_and_flash(world, "ann", "m0", "one disk")
    instructions = agent_finishes(world, "m0", first)
    assert sorted(e["disk"] for e in instructions["write"]) == ["/dev/sda1", "/dev/sda2"]
    assert instructions["layouts"][0]["disk"] == "/dev/sda"
    recorded = DiskContent.objects.filter(machine__name="m0")
    assert sorted(recorded.values_list("disk", flat=True)) == ["/dev/sda1", "/dev/sda2"]

    mac = world.boxes["m0"].mac
    setup = world.setups[("ann", "system")]
    body = {"setup": str(setup.uuid), "sync": False}  # ann chose not to bring /home back
    response = call(world, "ann", "post", f"/api/machine/{mac}/boot", body)
    assert response.status_code == 201, response.content
    run_pending_jobs()
    second = first.__class__.objects.get(pk=response.json()["id"])
    agent_finishes(world, "m0", second)

    assert list(recorded.values_list("disk", flat=True)) == ["/dev/sda"]
    invariants.check_disk_records_nest()


def test_images_written_into_a_kept_table_leave_no_whole_disk_record(world):  # noqa: F811
    """ann's system over the whole of /dev/sda, then her composed disk on it, whose agent
    finds the partition table already there and keeps it (an earlier flash left it there,
    or the system image carries the same table): /dev/sda no longer holds the system."""
    agent_finishes(world, "m0", lease_and_flash(world, "ann", "m0", "system"))
    recorded = DiskContent.objects.filter(machine__name="m0")
    assert list(recorded.values_list("disk", flat=True)) == ["/dev/sda"]

    composed = flash(world, "ann", "m0", "one disk")
    agent_finishes(world, "m0", composed, kept=True)

    assert sorted(recorded.values_list("disk", flat=True)) == ["/dev/sda1", "/dev/sda2"]
    invariants.check_disk_records_nest()
    said = composed.events.filter(action="disks_unknown").values_list("message", flat=True)
    assert list(said) == [
        "What was recorded on /dev/sda is forgotten: an image was written into its partition "
        "/dev/sda1."
    ]


def test_a_whole_disk_write_that_failed_forgets_its_partitions(world):  # noqa: F811
    """The composed disk is recorded (/home holds ann's user data); then a flash of the whole
    disk begins writing and fails: /dev/sda2 holds part of the system now, never user data
    to bring back."""
    agent_finishes(world, "m0", lease_and_flash(world, "ann", "m0", "one disk"))
    recorded = DiskContent.objects.filter(machine__name="m0")
    assert sorted(recorded.values_list("disk", flat=True)) == ["/dev/sda1", "/dev/sda2"]

    whole = flash(world, "ann", "m0", "system")
    secret = check_in(world, "m0", token_of(boot_script(world, "m0"))).json()["token"]
    instructions = call(world, None, "get", "/api/agent/instructions", secret=secret).json()
    for entry in instructions["sync"]:  # /home comes back first, unchanged
        report(world, secret, entry, "syncing", disk=entry["disk"])
    report(world, secret, instructions["write"][0], "writing")
    body = {"state": "failed", "written": [], "synced": [], "reason": "The disk did not answer."}
    assert call(world, None, "post", "/api/agent/result", body, secret=secret).status_code == 200

    whole.refresh_from_db()
    assert whole.state == DeploymentState.FAILED
    assert list(recorded.values_list("disk", flat=True)) == []


def flash(world, who: str, box: str, kind: str):  # noqa: F811 - the fixture's name
    """``who`` queues their setup ``kind`` with sync on the machine they lease."""
    body = {"setup": str(world.setups[(who, kind)].uuid), "sync": True}
    response = call(world, who, "post", f"/api/machine/{world.boxes[box].mac}/boot", body)
    assert response.status_code == 201, response.content
    run_pending_jobs()
    return Deployment.objects.get(pk=response.json()["id"])


def report(world, secret: str, entry: dict, phase: str, **disk) -> int:  # noqa: F811
    body = {"image": entry["image"], "phase": phase, "bytes_done": 0, "bytes_total": entry["size"]}
    return call(world, None, "post", "/api/agent/progress", {**body, **disk}, secret=secret)


def two_disks_to_sync(world) -> tuple[Deployment, str, dict]:  # noqa: F811
    """ann's data image is on /dev/sdb (``system+data``) and on /dev/sda2 (``one disk``);
    her next flash (``system``: /dev/sda) brings both back. Its deployment, the agent's
    token and its instructions."""
    agent_finishes(world, "m0", lease_and_flash(world, "ann", "m0", "system+data"))
    agent_finishes(world, "m0", flash(world, "ann", "m0", "one disk"))
    deployment = flash(world, "ann", "m0", "system")
    secret = check_in(world, "m0", token_of(boot_script(world, "m0"))).json()["token"]
    instructions = call(world, None, "get", "/api/agent/instructions", secret=secret).json()
    assert [e["disk"] for e in instructions["sync"]] == ["/dev/sda2", "/dev/sdb"]
    assert [e["disk"] for e in instructions["write"]] == ["/dev/sda"]
    return deployment, secret, instructions


def sync_back(world, secret: str, instructions: dict, *, named: bool) -> dict[str, tuple]:  # noqa: F811
    """As the real agent: each sync disk checked, then uploaded, changed; naming its disk in
    the reports, the upload and the ``synced`` item when ``named`` (an older agent does not).
    Disk -> (its ``synced`` item, the bytes sent)."""
    found = {}
    for seed, entry in enumerate(instructions["sync"], start=100):
        disk = {"disk": entry["disk"]} if named else {}
        assert report(world, secret, entry, "verifying", **disk).status_code == 204
        assert report(world, secret, entry, "syncing", **disk).status_code == 204
        url = entry["upload_url"] + (f"?{urlencode(disk)}" if named else "")
        with after_commit():
            response = bearer(secret).post(
                url, content(seed), content_type="application/octet-stream"
            )
        assert response.status_code == 201, response.content
        item = {"image": entry["image"], "version": response.json()["version"], **disk}
        found[entry["disk"]] = (item, content(seed))
    return found


def finish(world, secret: str, instructions: dict, state: str, synced: list):  # noqa: F811
    """The agent's result: ``done`` after writing, ``failed`` before it wrote anything."""
    for phase in ("writing", "verifying") if state == "done" else ():
        for entry in instructions["write"]:
            assert report(world, secret, entry, phase).status_code == 204
    written = [
        {k: e[k] for k in ("image", "version", "disk", "sha256")} for e in instructions["write"]
    ]
    reason = "" if state == "done" else "The disk did not answer."
    body = {"state": state, "written": written, "synced": synced, "reason": reason}
    return call(world, None, "post", "/api/agent/result", body, secret=secret)


def records(box: str = "m0") -> dict[str, tuple[str, int]]:
    contents = DiskContent.objects.filter(machine__name=box)
    return {c.disk: (c.image.name, c.version_number) for c in contents.select_related("image")}


@pytest.mark.parametrize("state", ["done", "failed"])
def test_user_data_on_two_disks_comes_back_as_each_disk_s_version(world, state):  # noqa: F811
    """The agent names the disk it brings back (its reports, the upload, the ``synced``
    item): each version is recorded as that disk's, and the disk, when not written over,
    is recorded as holding it. Before, reports named the image only: the server took them
    for one disk and refused the result for the other (409), then recorded both versions
    as from "/dev/sda2 or /dev/sdb" and kept both disks' old records."""
    deployment, secret, instructions = two_disks_to_sync(world)
    sent = sync_back(world, secret, instructions, named=True)

    response = finish(world, secret, instructions, state, [item for item, _ in sent.values()])

    assert response.status_code == 200, response.content
    deployment.refresh_from_db()
    assert deployment.state == state
    data = world.images[("ann", "data")]
    for disk, (item, bytes_sent) in sent.items():
        version = Version.objects.get(image=data, number=item["version"])
        assert version.sha256 == hashlib.sha256(bytes_sent).hexdigest()
        assert version.note == f"Synced back from {disk} of m0 by deployment #{deployment.pk}."
        assert deployment.events.get(
            action="synced", message__startswith=f"{disk} came back as version {version.number} "
        )
    assert sorted(item["version"] for item, _ in sent.values()) == [1, 2]
    sda2, sdb = (("ann-data", sent[disk][0]["version"]) for disk in ("/dev/sda2", "/dev/sdb"))
    if state == "done":  # /dev/sda was written: its partitions' records are forgotten
        assert records() == {"/dev/sda": ("ann-system", 0), "/dev/sdb": sdb}
    else:  # it failed before writing: each disk holds what came back from it
        assert records() == {"/dev/sda1": ("ann-system", 0), "/dev/sda2": sda2, "/dev/sdb": sdb}
    invariants.check_disk_records_nest()


@pytest.mark.parametrize("state", ["done", "failed"])
def test_an_older_agent_s_versions_from_two_disks_are_recorded_as_from_either(world, state):  # noqa: F811
    """Without the disk (an older agent), each version is recorded as from "/dev/sda2 or
    /dev/sdb", and the disks keep the version recorded before (which disk holds which
    version is not known): the next sync compares them with it."""
    deployment, secret, instructions = two_disks_to_sync(world)
    sent = sync_back(world, secret, instructions, named=False)
    before = records()

    response = finish(world, secret, instructions, state, [item for item, _ in sent.values()])

    assert response.status_code == 200, response.content
    deployment.refresh_from_db()
    assert deployment.state == state
    either = "/dev/sda2 or /dev/sdb"
    for item, _ in sent.values():
        version = Version.objects.get(image=world.images[("ann", "data")], number=item["version"])
        assert version.note == f"Synced back from {either} of m0 by deployment #{deployment.pk}."
        assert deployment.events.get(
            action="synced", message__startswith=f"{either} came back as version {version.number} "
        )
    if state == "done":
        assert records() == {"/dev/sda": ("ann-system", 0), "/dev/sdb": ("ann-data", 0)}
    else:
        assert (
            records()
            == before
            == {
                "/dev/sda1": ("ann-system", 0),
                "/dev/sda2": ("ann-data", 0),
                "/dev/sdb": ("ann-data", 0),
            }
        )


FORGED = ["/dev/sda1", "../../etc"]  # a disk of the machine that is not a sync row; a path


@pytest.mark.parametrize("forged", FORGED)
def test_a_synced_item_naming_a_disk_not_brought_back_is_refused(world, forged):  # noqa: F811
    """The agent token proves the deployment, not the disk: a ``synced`` item naming a disk
    the deployment does not bring the image back from is refused, and nothing recorded."""
    deployment, secret, instructions = two_disks_to_sync(world)
    sent = sync_back(world, secret, instructions, named=True)
    before = records()
    synced = [item for item, _ in sent.values()]
    synced[0] = {**synced[0], "disk": forged}

    response = finish(world, secret, instructions, "done", synced)

    assert response.status_code == 409, response.content
    assert forged in response.json()["detail"]
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.VERIFYING  # as the agent left it
    assert not deployment.events.filter(action="synced").exists()
    assert records() == before


@pytest.mark.parametrize("forged", FORGED)
def test_a_report_or_upload_naming_a_disk_not_brought_back_is_refused(world, forged):  # noqa: F811
    deployment, secret, instructions = two_disks_to_sync(world)
    entry = instructions["sync"][0]
    data = world.images[("ann", "data")]

    response = report(world, secret, entry, "syncing", disk=forged)
    assert response.status_code == 409, response.content
    with after_commit():
        upload = bearer(secret).post(
            f"{entry['upload_url']}?{urlencode({'disk': forged})}",
            content(7),
            content_type="application/octet-stream",
        )

    assert upload.status_code == 409, upload.content
    assert forged in upload.json()["detail"]
    assert not deployment.images.filter(progress_at__isnull=False).exists()
    assert list(Version.objects.filter(image=data).values_list("number", flat=True)) == [0]


def test_a_version_uploaded_for_one_disk_is_not_taken_for_the_other(world):  # noqa: F811
    """A version whose upload named /dev/sdb, reported as brought back from /dev/sda2,
    is refused: each disk's item is matched against its own sync row and note."""
    deployment, secret, instructions = two_disks_to_sync(world)
    sent = sync_back(world, secret, instructions, named=True)
    swapped = [
        {**sent["/dev/sda2"][0], "version": sent["/dev/sdb"][0]["version"]},
        sent["/dev/sdb"][0],
    ]

    response = finish(world, secret, instructions, "done", swapped)

    assert response.status_code == 409, response.content
    assert not deployment.events.filter(action="synced").exists()


def test_a_disk_brought_back_then_not_written_holds_what_came_back(world):  # noqa: F811
    """ann's data disk /dev/sdb is brought back, then the flash fails before it writes
    anything: /dev/sdb still holds what came back, and its record says so. Before, a disk
    the deployment was to write kept its old record even when nothing was written: the
    next flash took it for the version it held before the sync, re-flashed it in full and
    a sync brought the same changes back again as one more version."""
    agent_finishes(world, "m0", lease_and_flash(world, "ann", "m0", "system+data"))
    deployment = flash(world, "ann", "m0", "system+data")
    secret = check_in(world, "m0", token_of(boot_script(world, "m0"))).json()["token"]
    instructions = call(world, None, "get", "/api/agent/instructions", secret=secret).json()
    assert [e["disk"] for e in instructions["sync"]] == ["/dev/sdb"]
    assert "/dev/sdb" in [e["disk"] for e in instructions["write"]]
    sent = sync_back(world, secret, instructions, named=True)
    ((item, _),) = sent.values()

    response = finish(world, secret, instructions, "failed", [item])

    assert response.status_code == 200, response.content
    deployment.refresh_from_db()
    assert deployment.state == "failed"
    assert not deployment.events.filter(action="disks_unknown").exists()
    assert records()["/dev/sdb"] == ("ann-data", item["version"])
    invariants.check_disk_records_nest()
