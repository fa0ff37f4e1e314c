"""End to end: a live server, a Celery worker on Redis, the real agent flashing sparse files."""

from __future__ import annotations

import hashlib

import pytest

from catalogue.models import ImageType, Version
from flashing.models import DiskContent
from tests.flashing.e2e import MiB, image_bytes, sha256_of, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_one_image_is_flashed_verified_and_recorded(rig):
    version = rig.image(ImageType.SINGLE, "/dev/sda", image_bytes(1))
    deployment = rig.wait(rig.deploy(rig.setup(version)))
    assert deployment.state == "done", deployment.failure_reason
    disk = rig.disk("/dev/sda")
    assert disk.stat().st_size == version.size
    assert sha256_of(disk, version.size) == version.sha256
    assert disk.stat().st_blocks * 512 < version.size  # zero blocks stayed holes
    on_disk = DiskContent.objects.get(machine=rig.machine, disk="/dev/sda")
    assert (on_disk.image_id, on_disk.version_number) == (version.image_id, 0)
    # Then the machine is booted into its system, by the worker.
    wait_for(lambda: deployment.events.filter(action="system").exists(), "the system boot")
    body = rig.detail(deployment.pk)
    assert [(i["bytes_done"], i["bytes_total"]) for i in body["images"]] == [(version.size,) * 2]
    actions = [e["action"] for e in body["events"]]
    for expected in ("queued", "booting", "power", "checked_in", "writing", "done", "system"):
        assert expected in actions, actions
    assert any(e["action"] == "agent" and "checked in" in e["message"] for e in body["events"])
    rig.machine.refresh_from_db()
    assert rig.machine.state == "available"


@pytest.mark.parametrize(
    ("compression", "mapped", "logged"),
    [
        ("zstd", True, "writing its"),  # only the data frames travel
        ("gzip", True, "no data stream"),  # the whole file, checked by the map
        ("none", False, "checking the whole image"),  # no map: the whole image is hashed
    ],
)
def test_each_way_to_send_an_image_writes_the_same_disk(rig, compression, mapped, logged):
    version = rig.image(
        ImageType.SINGLE, "/dev/sda", image_bytes(9), compression=compression, mapped=mapped
    )
    assert version.stored_compression == compression
    deployment = rig.wait(rig.deploy(rig.setup(version)))
    assert deployment.state == "done", deployment.failure_reason
    disk = rig.disk("/dev/sda")
    assert sha256_of(disk, version.size) == version.sha256
    assert disk.stat().st_blocks * 512 < version.size
    assert logged in rig.agent_logs()


def test_a_setup_of_three_images_lands_on_three_disks(rig):
    versions = [
        rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(2, 4 * MiB)),
        rig.image(ImageType.USER_DATA, "/dev/sdb", image_bytes(3)),
        rig.image(ImageType.TEMPORAL, "/dev/sdc", image_bytes(4, 2 * MiB)),
    ]
    deployment = rig.wait(rig.deploy(rig.setup(*versions)))
    assert deployment.state == "done", deployment.failure_reason
    for version in versions:
        disk = rig.disk(version.image.target_disk)
        assert sha256_of(disk, version.size) == version.sha256
    recorded = DiskContent.objects.filter(machine=rig.machine).order_by("disk")
    assert [(c.disk, c.image_id, c.sync) for c in recorded] == [
        ("/dev/sda", versions[0].image_id, False),
        ("/dev/sdb", versions[1].image_id, True),
        ("/dev/sdc", versions[2].image_id, False),
    ]


def test_a_changed_user_data_disk_comes_back_as_the_next_version(rig):
    system = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(5))
    data = rig.image(ImageType.USER_DATA, "/dev/sdb", image_bytes(6))
    first = rig.wait(rig.deploy(rig.setup(system, data)))
    assert first.state == "done", first.failure_reason
    disk = rig.disk("/dev/sdb")
    with disk.open("r+b") as handle:  # the researcher's job wrote its results
        handle.seek(1 * MiB + 7)
        handle.write(b"results of the experiment")
    changed = hashlib.sha256(disk.read_bytes()).hexdigest()
    second = rig.wait(rig.deploy(rig.setup(system), sync=True))
    assert second.state == "done", second.failure_reason
    back = Version.objects.get(image=data.image, number=1)
    assert (back.sha256, back.size) == (changed, data.size)
    on_disk = DiskContent.objects.get(machine=rig.machine, disk="/dev/sdb")
    assert on_disk.version_number == 1  # what is there now, for the next sync
    assert any(e["action"] == "synced" for e in rig.detail(second.pk)["events"])
    # Unchanged since: the next sync uploads nothing.
    third = rig.wait(rig.deploy(rig.setup(system), sync=True))
    assert third.state == "done", third.failure_reason
    assert not Version.objects.filter(image=data.image, number=2).exists()


def test_two_queued_deployments_run_in_order(rig):
    one = rig.image(ImageType.SINGLE, "/dev/sda", image_bytes(7))
    two = rig.image(ImageType.SINGLE, "/dev/sda", image_bytes(8))
    first_id = rig.deploy(rig.setup(one))
    second_id = rig.deploy(rig.setup(two))
    first, second = rig.wait(first_id), rig.wait(second_id)
    assert (first.state, second.state) == ("done", "done")
    assert first.finished_at <= second.started_at
    assert sha256_of(rig.disk("/dev/sda"), two.size) == two.sha256
    on_disk = DiskContent.objects.get(machine=rig.machine, disk="/dev/sda")
    assert (on_disk.image_id, on_disk.deployment_id) == (two.image_id, second_id)
