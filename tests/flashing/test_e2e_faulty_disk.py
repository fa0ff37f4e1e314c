"""End to end, a disk that cannot read a sector: the deployment fails with the disk's error
in plain words, and the disk is no longer recorded as holding anything.

Live server, Celery worker, the real ``baas-agent`` process; the machine's ``/dev/sda`` is
a FUSE file (``tests/diskimage/faultydisk.py``) over the sparse file the first flash wrote,
whose bytes 2 MiB to 2 MiB + 512 answer every read with ``EIO``.
"""

from __future__ import annotations

import pytest

from catalogue.models import ImageType
from flashing.models import DiskContent
from tests.diskimage.faultydisk import faulty_disk
from tests.flashing.e2e import MiB, image_bytes

pytestmark = [pytest.mark.worker, pytest.mark.root, pytest.mark.django_db(transaction=True)]


def test_a_disk_with_a_bad_sector_fails_the_deployment_with_its_error(rig, tmp_path):
    v0 = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(7), compression="zstd")
    first = rig.wait(rig.deploy(rig.setup(v0)))
    assert first.state == "done", first.failure_reason
    assert DiskContent.objects.filter(machine=rig.machine, disk="/dev/sda").exists()
    disk = rig.disk("/dev/sda")
    backing = tmp_path / "sda-backing.img"
    disk.rename(backing)
    assert image_bytes(7)[2 * MiB : 2 * MiB + 512].strip(b"\0")  # the bad sector holds data

    with faulty_disk(tmp_path, backing, bad=(2 * MiB, 2 * MiB + 512)) as served:
        disk.symlink_to(served)
        deployment = rig.wait(rig.deploy(rig.setup(v0)))

    assert deployment.state == "failed"
    # The reason says what failed, where, in words: the read-back of the range with the sector.
    reason = deployment.failure_reason
    assert "reading back bytes" in reason and "failed: Input/output error" in reason, reason
    messages = [e["message"] for e in rig.detail(deployment.pk)["events"]]
    # Why it was written in full: the check of what the disk held could not read it.
    assert any(
        "not on the disk as it is (reading bytes" in m and "Input/output error" in m
        for m in messages
    ), messages
    assert any(m.startswith("What is on /dev/sda is unknown now") for m in messages), messages
    assert not DiskContent.objects.filter(machine=rig.machine, disk="/dev/sda").exists()
