"""The lifecycle model's "one disk" setup, straight-line: a table flashed, then a whole disk.

Same world and hands as ``test_regressions``. Before a write over a whole disk forgot
what its partitions held, the second flash left /dev/sda2 recorded as ann's user data
while /dev/sda held the system image: a later sync would have uploaded the system's
bytes as her data (``disk-records-nest``).
"""

from __future__ import annotations

import pytest

from diskimage import gpt
from flashing.models import DeploymentState, DiskContent
from tests.integrity import invariants
from tests.integrity.test_regressions import (
    boot_script,
    call,
    check_in,
    lease_and_flash,
    token_of,
    world,  # noqa: F401 - the fixture
)
from tests.integrity.world import GiB, run_pending_jobs

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
