"""End to end: a user data disk brought back as its changes against the version flashed on it.

A live server, a Celery worker on Redis and the real agent; the disk is an ext4
file system (``mkfs.ext4 -d``) in which a few files are changed with
``debugfs`` between the flash and the sync, as a researcher's job would.
The new version must be the disk byte for byte, and the server must have
received about the changed blocks only (counted server-side, in the audit log).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import zstandard

from accounts.models import AuditEvent
from catalogue.models import ImageType, Version
from catalogue.services.digests import version_digest_ensure
from catalogue.storage import get_storage
from diskimage import BLOCK
from flashing.models import DiskContent
from tests.flashing.e2e import MiB, image_bytes

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SIZE = 64 * MiB


def ext4_image(tmp_path: Path) -> bytes:
    """A 64 MiB ext4 holding ~6 MiB of files (configs, a results directory, a binary blob)."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "results").mkdir()
    for n in range(40):
        (tree / "etc" / f"conf-{n}.txt").write_text(f"setting_{n} = {n * 7}\n" * 50)
    for n in range(8):
        (tree / "results" / f"run-{n}.dat").write_bytes(hashlib.sha256(bytes([n])).digest() * 16384)
    (tree / "blob.bin").write_bytes(os.urandom(2 * MiB))
    path = tmp_path / "base.img"
    options = ["-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,nodiscard"]
    subprocess.run(["mkfs.ext4", *options, "-d", str(tree), str(path), "64M"], check=True)
    return path.read_bytes()


def change_files(disk: Path, tmp_path: Path) -> None:
    """What the job did: one file rewritten, one new, one deleted (debugfs, no mount)."""
    new = tmp_path / "new-results.dat"
    new.write_bytes(os.urandom(300 * 1024))
    rewritten = tmp_path / "conf-3.txt"
    rewritten.write_text("setting_3 = changed by the experiment\n" * 80)
    commands = tmp_path / "debugfs.cmds"
    commands.write_text(
        f"rm /etc/conf-3.txt\nwrite {rewritten} /etc/conf-3.txt\n"
        f"write {new} /results/new-results.dat\nrm /results/run-5.dat\n"
    )
    debugfs = ["debugfs", "-w", "-f", str(commands), str(disk)]
    subprocess.run(debugfs, check=True, capture_output=True)
    subprocess.run(["e2fsck", "-fn", str(disk)], check=True, capture_output=True)


def changed_bytes(before: bytes, after: bytes) -> int:
    return BLOCK * sum(
        before[at : at + BLOCK] != after[at : at + BLOCK] for at in range(0, len(before), BLOCK)
    )


def stored(version: Version) -> bytes:
    version.refresh_from_db()
    path = get_storage().version_path(version.image_id, version.number, version.stored_compression)
    if version.stored_compression != "none":  # the worker compressed it meanwhile
        with path.open("rb") as file:
            reader = zstandard.ZstdDecompressor().stream_reader(file, read_across_frames=True)
            return reader.read()
    data = path.read_bytes()
    return data + bytes(version.size - len(data))


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_disk_with_a_few_changed_files_comes_back_as_its_changes(rig, tmp_path, compression):
    base_bytes = ext4_image(tmp_path)
    system = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(5))
    data = rig.image(ImageType.USER_DATA, "/dev/sdb", base_bytes, compression=compression)
    first = rig.wait(rig.deploy(rig.setup(system, data)))
    assert first.state == "done", first.failure_reason
    disk = rig.disk("/dev/sdb")
    change_files(disk, tmp_path)
    after = disk.read_bytes()
    assert after != base_bytes

    second = rig.wait(rig.deploy(rig.setup(system), sync=True), timeout=40)
    assert second.state == "done", second.failure_reason
    back = Version.objects.get(image=data.image, number=1)
    assert back.based_on == 0
    assert version_digest_ensure(back) == hashlib.sha256(after).hexdigest()
    assert stored(back) == after  # byte for byte the disk
    event = AuditEvent.objects.get(action="version.delta", target_id=str(back.pk))
    changes = changed_bytes(base_bytes, after)
    assert changes < len(base_bytes) // 10
    # The server received the changed blocks and little else (a 12-byte header per run).
    assert event.data["carried_bytes"] <= 1.1 * changes + 64 * BLOCK
    assert event.data["delta_bytes"] <= 1.1 * changes + 16 * 1024
    assert DiskContent.objects.get(machine=rig.machine, disk="/dev/sdb").version_number == 1
    assert "sending a" in rig.agent_logs()


def test_a_sync_back_whose_base_is_no_longer_latest_is_made_from_its_base(rig, tmp_path):
    base_bytes = ext4_image(tmp_path)
    system = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(5))
    data = rig.image(ImageType.USER_DATA, "/dev/sdb", base_bytes)
    first = rig.wait(rig.deploy(rig.setup(system, data)))
    assert first.state == "done", first.failure_reason
    # Meanwhile, the owner uploads version 1 from elsewhere.
    elsewhere = image_bytes(9, SIZE)
    response = rig.client.generic(
        "POST", f"/api/image/{data.image_id}", elsewhere, content_type="application/octet-stream"
    )
    assert response.status_code == 201, response.content
    disk = rig.disk("/dev/sdb")
    change_files(disk, tmp_path)
    after = disk.read_bytes()

    second = rig.wait(rig.deploy(rig.setup(system), sync=True), timeout=40)
    assert second.state == "done", second.failure_reason
    back = Version.objects.get(image=data.image, number=2)
    assert back.based_on == 0  # the disk's changes on what it held, not on version 1
    assert stored(back) == after
    assert stored(Version.objects.get(image=data.image, number=1)) == elsewhere  # nothing lost
    assert AuditEvent.objects.get(action="version.delta").data["latest_was"] == 1


def test_an_unchanged_disk_sends_nothing(rig, tmp_path):
    system = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(5))
    data = rig.image(ImageType.USER_DATA, "/dev/sdb", ext4_image(tmp_path))
    assert rig.wait(rig.deploy(rig.setup(system, data))).state == "done"
    second = rig.wait(rig.deploy(rig.setup(system), sync=True))
    assert second.state == "done", second.failure_reason
    assert not Version.objects.filter(image=data.image, number=1).exists()
    assert not AuditEvent.objects.filter(action="version.delta").exists()


def test_a_delta_the_server_refuses_is_followed_by_the_whole_disk(rig, tmp_path):
    base_bytes = ext4_image(tmp_path)
    system = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(5))
    data = rig.image(ImageType.USER_DATA, "/dev/sdb", base_bytes)
    assert rig.wait(rig.deploy(rig.setup(system, data))).state == "done"
    disk = rig.disk("/dev/sdb")
    change_files(disk, tmp_path)
    after = disk.read_bytes()
    # The base cannot be one any more (its file went bad): the delta is refused (400).
    Version.objects.filter(pk=data.pk).update(damaged="its file was damaged on the disk")
    second = rig.wait(rig.deploy(rig.setup(system), sync=True), timeout=40)
    assert second.state == "done", second.failure_reason
    back = Version.objects.get(image=data.image, number=1)
    assert back.based_on is None  # brought back whole
    assert (back.sha256, stored(back)) == (hashlib.sha256(after).hexdigest(), after)
    assert "refused the delta" in rig.agent_logs()
    assert not AuditEvent.objects.filter(action="version.delta").exists()
