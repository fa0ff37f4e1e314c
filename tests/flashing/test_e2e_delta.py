"""End to end, delta re-flash: the real agent turns a disk holding version n into n+1.

Live server, Celery worker, the real ``baas-agent`` process on sparse files.
What the agent downloaded and wrote is read from its own log line (shipped
to the deployment's event log) and checked against the two versions' bytes,
compared here range by range.
"""

from __future__ import annotations

import os
import random
import re

import pytest

from catalogue.models import ImageType, Version
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map, version_map_build
from catalogue.services.datastream import data_stream_open
from catalogue.storage import get_storage
from flashing.models import DiskContent
from tests.catalogue.factories import write_version
from tests.flashing.e2e import MiB, sha256_of

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BLOCK = 4096
SIZE = 8 * MiB
DELTA_LINE = re.compile(r"(\d+) bytes downloaded, (\d+) written, (\d+) zeroed")


def extents(seed: int) -> list[tuple[int, int]]:
    """Data extents of a test disk: 24 runs of 16-160 KiB, apart, in its first 6 MiB."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    starts = sorted(rng.sample(range(0, 6 * MiB // BLOCK - 64, 60), 24))  # 7 MiB on: free
    return [(s * BLOCK, (s + rng.randint(4, 40)) * BLOCK) for s in starts]


def disk_bytes(layout: list[tuple[int, int]], seed: int) -> bytearray:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    content = bytearray(SIZE)
    for start, end in layout:
        content[start:end] = rng.randbytes(end - start)
    return content


def next_version(version: Version, content: bytes | bytearray) -> Version:
    """The image's next version, mapped and stored as the image stores them (zstd frames)."""
    image = version.image
    new = write_version(image, version.number + 1, bytes(content))
    version_map_build(version_id=new.pk)
    if image.compression != "none":
        version_compress(version_id=new.pk)
        new.refresh_from_db()
    return new


def changed_ranges(old: Version, new: Version, old_bytes: bytes, new_bytes: bytes) -> int:
    """Bytes of the new map's ranges that are not, byte for byte, a range of the old map."""
    old_ranges = {(start, end) for start, end, _ in version_map(old).ranges}
    return sum(
        end - start
        for start, end, _ in version_map(new).ranges
        if (start, end) not in old_ranges or old_bytes[start:end] != new_bytes[start:end]
    )


def delta_line(rig, deployment_id: int) -> tuple[int, int, int] | None:
    for event in rig.detail(deployment_id)["events"]:
        if event["action"] == "agent" and (match := DELTA_LINE.search(event["message"])):
            return int(match[1]), int(match[2]), int(match[3])
    return None


def flash(rig, version: Version):
    deployment = rig.wait(rig.deploy(rig.setup(version)))
    assert deployment.state == "done", deployment.failure_reason
    assert sha256_of(rig.disk("/dev/sda"), version.size) == version.sha256
    return deployment


def test_a_re_flash_to_the_next_version_writes_only_what_changed(rig):
    layout = extents(1)
    first = disk_bytes(layout, 1)
    v0 = rig.image(ImageType.SYSTEM, "/dev/sda", bytes(first), compression="zstd")
    flash(rig, v0)
    second = bytearray(first)
    for start, end in layout[3:5]:  # two files rewritten
        second[start:end] = os.urandom(end - start)
    start, end = layout[10]
    second[start:end] = bytes(end - start)  # one deleted: its blocks are zeros now
    second[7 * MiB : 7 * MiB + 20 * BLOCK] = os.urandom(20 * BLOCK)  # one new
    v1 = next_version(v0, second)

    deployment = flash(rig, v1)

    downloaded, written, zeroed = delta_line(rig, deployment.pk) or pytest.fail(
        f"no delta line in the events:\n{rig.agent_logs()[-3000:]}"
    )
    expected = changed_ranges(v0, v1, bytes(first), bytes(second))
    assert written == expected == sum(e - s for s, e in layout[3:5]) + 20 * BLOCK
    assert zeroed == end - start
    assert downloaded <= 1.1 * written  # random data: the frames are the bytes, and a few more
    on_disk = DiskContent.objects.get(machine=rig.machine, disk="/dev/sda")
    assert on_disk.version_number == 1
    # The run that became zeros is a hole again on a file disk.
    fd = os.open(rig.disk("/dev/sda"), os.O_RDONLY)
    try:
        assert os.lseek(fd, start, os.SEEK_DATA) >= end
    finally:
        os.close(fd)


def test_a_tampered_disk_is_flashed_in_full_and_the_event_log_says_why(rig):
    layout = extents(2)
    first = disk_bytes(layout, 2)
    v0 = rig.image(ImageType.SYSTEM, "/dev/sda", bytes(first), compression="zstd")
    flash(rig, v0)
    second = bytearray(first)
    second[layout[0][0] : layout[0][1]] = os.urandom(layout[0][1] - layout[0][0])
    v1 = next_version(v0, second)
    kept = layout[5][0] + 100  # a byte of a range both versions share
    with rig.disk("/dev/sda").open("r+b") as disk:  # someone wrote to it meanwhile
        disk.seek(kept)
        disk.write(bytes([first[kept] ^ 0xFF]))

    deployment = flash(rig, v1)

    assert delta_line(rig, deployment.pk) is None
    messages = [e["message"] for e in rig.detail(deployment.pk)["events"]]
    why = [m for m in messages if "does not hold v0" in m and "writing it in full" in m]
    assert why, messages
    assert f"bytes {layout[5][0]}-" in why[0]  # it names what differs


def test_a_disk_whose_record_was_forgotten_is_flashed_in_full(rig):
    layout = extents(3)
    first = disk_bytes(layout, 3)
    v0 = rig.image(ImageType.SYSTEM, "/dev/sda", bytes(first), compression="zstd")
    flash(rig, v0)
    DiskContent.objects.filter(machine=rig.machine).delete()  # as a failed flash leaves it
    v1 = next_version(v0, first[: SIZE // 2] + bytes(SIZE // 2))
    deployment = flash(rig, v1)
    assert delta_line(rig, deployment.pk) is None


def test_a_delta_that_does_not_land_fails_the_flash_and_the_disk_is_forgotten(rig):
    layout = extents(4)
    first = disk_bytes(layout, 4)
    v0 = rig.image(ImageType.SYSTEM, "/dev/sda", bytes(first), compression="zstd")
    flash(rig, v0)
    second = bytearray(first)
    start, end = layout[2]
    second[start:end] = os.urandom(end - start)
    v1 = next_version(v0, second)
    stream = data_stream_open(v1)  # the stored frames: one is damaged on the server's disk
    index = next(i for i, (s, _, _) in enumerate(version_map(v1).ranges) if s == start)
    offset, length = stream.pieces[index]
    stream.close()
    path = get_storage().version_path(v1.image.uuid, v1.number, v1.stored_compression)
    with path.open("r+b") as stored:
        stored.seek(offset + length // 2)
        byte = stored.read(1)
        stored.seek(offset + length // 2)
        stored.write(bytes([byte[0] ^ 0xFF]))

    deployment = rig.wait(rig.deploy(rig.setup(v1)))

    assert deployment.state == "failed"
    messages = [e["message"] for e in rig.detail(deployment.pk)["events"]]
    assert any("delta from v0" in m and "did not land" in m for m in messages), messages
    assert any(m.startswith("What is on /dev/sda is unknown now") for m in messages), messages
    assert not DiskContent.objects.filter(machine=rig.machine, disk="/dev/sda").exists()


def big_range_disk(seed: int) -> bytearray:
    """20 MiB: 17 MiB of incompressible data from 1 MiB on (a 16 MiB range, then one of 1 MiB)."""
    content = bytearray(20 * MiB)
    content[MiB : 18 * MiB] = random.Random(seed).randbytes(17 * MiB)  # noqa: S311
    return content


def test_one_changed_block_of_a_16_mib_range_downloads_about_that_block(rig):
    first = big_range_disk(5)
    v0 = rig.image(ImageType.SYSTEM, "/dev/sda", bytes(first), compression="zstd")
    flash(rig, v0)
    assert version_map(v0).ranges[0][:2] == (MiB, 17 * MiB)
    second = bytearray(first)
    second[9 * MiB : 9 * MiB + BLOCK] = os.urandom(BLOCK)
    v1 = next_version(v0, second)

    deployment = flash(rig, v1)

    downloaded, written, zeroed = delta_line(rig, deployment.pk) or pytest.fail(
        f"no delta line in the events:\n{rig.agent_logs()[-3000:]}"
    )
    assert (written, zeroed) == (BLOCK, 0)
    assert BLOCK <= downloaded <= 1.1 * BLOCK  # the block, raw, and not its 16 MiB range
    assert DiskContent.objects.get(machine=rig.machine, disk="/dev/sda").version_number == 1


def test_a_tampered_block_beside_the_changed_ones_flashes_the_disk_in_full(rig):
    first = big_range_disk(6)
    v0 = rig.image(ImageType.SYSTEM, "/dev/sda", bytes(first), compression="zstd")
    flash(rig, v0)
    second = bytearray(first)
    second[9 * MiB : 9 * MiB + BLOCK] = os.urandom(BLOCK)
    v1 = next_version(v0, second)
    tampered = 12 * MiB + 5  # same range, a block the delta keeps
    with rig.disk("/dev/sda").open("r+b") as disk:
        disk.seek(tampered)
        disk.write(bytes([first[tampered] ^ 0xFF]))

    deployment = flash(rig, v1)  # the disk holds v1 byte for byte all the same

    assert delta_line(rig, deployment.pk) is None
    messages = [e["message"] for e in rig.detail(deployment.pk)["events"]]
    why = [m for m in messages if "does not hold v0" in m and "writing it in full" in m]
    assert why, messages
    assert f"bytes {MiB}-{17 * MiB} differ from the image outside the changed blocks" in why[0]
