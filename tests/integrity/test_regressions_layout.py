"""The lifecycle model's "one disk" setup, straight-line: a table flashed, then a whole disk.

Same world and hands as ``test_regressions``. Before a write over a whole disk forgot
what its partitions held, the second flash left /dev/sda2 recorded as ann's user data
while /dev/sda held the system image: a later sync would have uploaded the system's
bytes as her data (``disk-records-nest``).
"""

from __future__ import annotations

import hashlib

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
from tests.integrity.world import GiB, bearer, content, run_pending_jobs

pytestmark = pytest.mark.django_db


def agent_finishes(world, box: str, deployment) -> dict:  # noqa: F811 - the fixture's name
    """The agent checks in, reads its instructions, reports progress and success."""
    secret = check_in(world, box, token_of(boot_script(world, box))).json()["token"]
    instructions = call(world, None, "get", "/api/agent/instructions", secret=secret).json()
    for entry in instructions["write"]:
        body = {"image": entry["image"], "phase": "verifying", "bytes_done": 1, "bytes_total": 1}
        call(world, None, "post", "/api/agent/progress", body, secret=secret)
    tables = []
    for table in instructions["layouts"]:
        specs = [gpt.Spec(p["label"], p["size"], p["type"]) for p in table["partitions"]]
        placed = [p.as_json() for p in gpt.plan(GiB, specs)]
        tables.append({"disk": table["disk"], "created": True, "partitions": placed})
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


def flash(world, who: str, box: str, kind: str):  # noqa: F811 - the fixture's name
    """``who`` queues their setup ``kind`` with sync on the machine they lease."""
    body = {"setup": str(world.setups[(who, kind)].uuid), "sync": True}
    response = call(world, who, "post", f"/api/machine/{world.boxes[box].mac}/boot", body)
    assert response.status_code == 201, response.content
    run_pending_jobs()
    return Deployment.objects.get(pk=response.json()["id"])


def report(world, secret: str, entry: dict, phase: str) -> None:  # noqa: F811
    body = {"image": entry["image"], "phase": phase, "bytes_done": 0, "bytes_total": entry["size"]}
    assert call(world, None, "post", "/api/agent/progress", body, secret=secret).status_code == 204


DISKS = "/dev/sda2 or /dev/sdb"  # which one a version came from, the agent does not say


@pytest.mark.parametrize("state", ["done", "failed"])
def test_user_data_on_two_disks_comes_back_from_both_whatever_the_flash_ends(world, state):  # noqa: F811
    """ann's data image is on /dev/sdb (``system+data``) and on /dev/sda2 (``one disk``);
    her next flash brings both back. The agent's reports name the image, not the disk:
    the server took them for one disk and refused the result for the other (409, "it
    reported no progress bringing it back"), so a done flash hung until the watchdog
    failed it, and a failed one lost the record of what came back."""
    agent_finishes(world, "m0", lease_and_flash(world, "ann", "m0", "system+data"))
    agent_finishes(world, "m0", flash(world, "ann", "m0", "one disk"))
    deployment = flash(world, "ann", "m0", "system+data")
    secret = check_in(world, "m0", token_of(boot_script(world, "m0"))).json()["token"]
    instructions = call(world, None, "get", "/api/agent/instructions", secret=secret).json()
    assert [e["disk"] for e in instructions["sync"]] == ["/dev/sda2", "/dev/sdb"]

    synced, sent = [], {}
    for seed, entry in enumerate(instructions["sync"], start=100):  # as the real agent
        report(world, secret, entry, "verifying")  # it checks the disk first
        report(world, secret, entry, "syncing")
        client = bearer(secret)
        response = client.post(
            entry["upload_url"], content(seed), content_type="application/octet-stream"
        )
        assert response.status_code == 201, response.content
        synced.append({"image": entry["image"], "version": response.json()["version"]})
        sent[response.json()["version"]] = content(seed)
    for phase in ("writing", "verifying"):
        for entry in instructions["write"]:
            report(world, secret, entry, phase)
    written = [
        {k: e[k] for k in ("image", "version", "disk", "sha256")} for e in instructions["write"]
    ]
    reason = "" if state == "done" else "The disk did not answer."
    body = {"state": state, "written": written, "synced": synced, "reason": reason}
    response = call(world, None, "post", "/api/agent/result", body, secret=secret)

    assert response.status_code == 200, response.content
    deployment.refresh_from_db()
    assert (deployment.state, deployment.failure_reason) == (state, reason)
    data = world.images[("ann", "data")]
    assert sorted(sent) == [1, 2]
    for number, bytes_sent in sent.items():  # each disk's user data is a version, recorded
        version = Version.objects.get(image=data, number=number)
        assert version.sha256 == hashlib.sha256(bytes_sent).hexdigest()
        assert deployment.events.get(action="synced", message__contains=f"version {number} ")
        assert version.note == f"Synced back from {DISKS} of m0 by deployment #{deployment.pk}."
    came_back = deployment.events.filter(action="synced").values_list("message", flat=True)
    assert all(message.startswith(f"{DISKS} came back as version") for message in came_back)
