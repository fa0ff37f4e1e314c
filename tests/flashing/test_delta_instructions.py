"""The ``delta`` of a write instruction, through the agent's API (docs/agent-protocol.md §5a)."""

from __future__ import annotations

import hashlib
import random

import pytest
import zstandard
from django.utils import timezone

from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map_build
from diskimage.sparsedelta import block_hashes, hashes_digest
from flashing.models import DiskContent
from flashing.services.pipeline import machine_start_next
from tests.catalogue.factories import (
    ImageFactory,
    write_version,
)
from tests.flashing.agentcalls import checked_in, queue_setup_of

pytestmark = pytest.mark.django_db

BLOCK = 4096


def disk(pattern: str, salt: bytes = b"") -> bytes:
    """One 4 KiB block per letter: ``.`` zeros, any other letter that letter's bytes."""
    return b"".join(
        bytes(BLOCK)
        if c == "."
        else hashlib.sha256(salt + c.encode() + bytes([i % 256])).digest() * (BLOCK // 32)
        for i, c in enumerate(pattern)
    )


FIRST = disk("aaaa....bbbb....cccc....dddd....")
SECOND = disk("aaaa....BBBB..........eeeedddd....")[: len(FIRST)]


def stored(image, number: int, content: bytes):
    version = write_version(image, number, content)
    version_map_build(version_id=version.pk)
    version_compress(version_id=version.pk)
    version.refresh_from_db()
    return version


@pytest.fixture
def image(user):
    return ImageFactory(owner=user, target_disk="/dev/sda", compression="zstd")


def deploy(user_client, machine, user, version):
    queue_setup_of(user_client, user, machine, version)
    machine_start_next(machine_id=machine.pk)
    agent = checked_in(machine)
    return agent, agent.get("/api/agent/instructions").json()["write"][0]


def record(machine, version, disk_path: str = "/dev/sda") -> None:
    DiskContent.objects.create(
        machine=machine,
        disk=disk_path,
        image=version.image,
        version=version,
        version_number=version.number,
        written_at=timezone.now(),
    )


def test_a_write_onto_a_disk_holding_another_version_says_what_differs(
    user, user_client, machine, image
):
    v0, v1 = stored(image, 0, FIRST), stored(image, 1, SECOND)
    record(machine, v0)
    agent, entry = deploy(user_client, machine, user, v1)
    delta = entry["delta"]
    assert (delta["image"], delta["version"], delta["sha256"]) == (str(image.uuid), 0, v0.sha256)
    ranges = agent.get(entry["map_url"]).json()["ranges"]
    old = {tuple(r) for r in agent.get(f"/api/image/{image.uuid}/0/map").json()["ranges"]}
    changed = [i for i, r in enumerate(ranges) if tuple(r) not in old]
    assert [i for i, _, _ in delta["ranges"]] == changed == [1, 2]  # BBBB; eeee + dddd
    # Each changed range is where the instruction says in the data stream: its own frame.
    for index, offset, length in delta["ranges"]:
        response = agent.get(entry["data_url"], HTTP_RANGE=f"bytes={offset}-{offset + length - 1}")
        assert response.status_code == 206
        frame = b"".join(response.streaming_content)
        start, end, _ = ranges[index]
        assert zstandard.ZstdDecompressor().decompress(frame) == SECOND[start:end]
    # cccc held data and is zeros now.
    assert delta["zeros"] == [[16 * BLOCK, 20 * BLOCK]]
    assert delta["changed_bytes"] == 12 * BLOCK  # BBBB, and eeee with dddd beside it


@pytest.mark.parametrize("case", ["nothing recorded", "the same version", "deleted", "resized"])
def test_no_delta_when_there_is_nothing_to_compare_with(user, user_client, machine, image, case):
    v0 = stored(image, 0, FIRST)
    v1 = stored(image, 1, SECOND if case != "resized" else SECOND + bytes(BLOCK))
    if case == "the same version":
        record(machine, v1)
    elif case == "deleted":
        record(machine, v0)
        DiskContent.objects.update(version=None)  # what the row keeps when a version is deleted
    elif case == "resized":
        record(machine, v0)
    _, entry = deploy(user_client, machine, user, v1)
    assert "delta" not in entry


def test_a_record_on_another_disk_gives_no_delta(user, user_client, machine, image):
    v0, v1 = stored(image, 0, FIRST), stored(image, 1, SECOND)
    record(machine, v0, "/dev/sdb")
    _, entry = deploy(user_client, machine, user, v1)
    assert "delta" not in entry


def test_the_data_stream_sends_the_chosen_ranges_alone_in_one_answer(
    user, user_client, machine, image
):
    v0, v1 = stored(image, 0, FIRST), stored(image, 1, SECOND)
    record(machine, v0)
    agent, entry = deploy(user_client, machine, user, v1)
    ranges = agent.get(entry["map_url"]).json()["ranges"]
    response = agent.get(entry["data_url"] + "?ranges=1-2")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert int(response["Content-Length"]) == len(body)
    assert len(body) == sum(length for _, _, length in entry["delta"]["ranges"])
    frames = zstandard.ZstdDecompressor().decompressobj()
    assert frames.decompress(body) == SECOND[ranges[1][0] : ranges[1][1]]  # the first frame
    whole = agent.get(entry["data_url"])
    b"".join(whole.streaming_content)  # read to the end, which closes the file
    assert response["ETag"] != whole["ETag"]
    # A resumed answer of the same choice: Range on it.
    part = agent.get(entry["data_url"] + "?ranges=1-2", HTTP_RANGE="bytes=10-")
    assert part.status_code == 206
    assert b"".join(part.streaming_content) == body[10:]


@pytest.mark.parametrize("spec", ["", "2-1", "1,1", "0,9", "a", "1;2", "1-", "3" * 3001])
def test_a_bad_choice_of_ranges_is_a_plain_400(user, user_client, machine, image, spec):
    v1 = stored(image, 1, SECOND)
    agent, entry = deploy(user_client, machine, user, v1)
    response = agent.get(entry["data_url"] + "?ranges=" + spec)
    assert response.status_code == 400
    assert "ranges" in response.json()["errors"]


def test_another_users_data_stream_is_not_found_whatever_ranges_are_asked(other_client, image):
    v1 = stored(image, 1, SECOND)
    response = other_client.get(f"/api/image/{v1.image_id}/1/data?ranges=0")
    assert response.status_code == 404


def noise(blocks: int, seed: int) -> bytes:
    """Incompressible blocks: their zstd frame is no smaller than their bytes."""
    return random.Random(seed).randbytes(blocks * BLOCK)  # noqa: S311 - test data


# One range of 32 blocks of incompressible data, then zeros; the next version changes
# its blocks 5 and 20-21.
NOISY = noise(32, 1) + bytes(32 * BLOCK)
NOISY_NEXT = NOISY[: 5 * BLOCK] + noise(1, 2) + NOISY[6 * BLOCK : 20 * BLOCK] + noise(2, 3)
NOISY_NEXT += NOISY[22 * BLOCK :]


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_range_of_which_a_few_blocks_changed_goes_as_those_blocks(
    user, user_client, machine, compression
):
    image = ImageFactory(owner=user, target_disk="/dev/sda", compression=compression)
    v0, v1 = stored(image, 0, NOISY), stored(image, 1, NOISY_NEXT)
    record(machine, v0)
    agent, entry = deploy(user_client, machine, user, v1)
    delta = entry["delta"]
    assert delta["ranges"] == []  # the range is not sent whole
    runs = [(5 * BLOCK, 6 * BLOCK), (20 * BLOCK, 22 * BLOCK)]
    assert delta["parts"] == [
        [0, start, end, hashes_digest(block_hashes(NOISY_NEXT[start:end]))] for start, end in runs
    ]
    assert delta["changed_bytes"] == 3 * BLOCK
    # The data stream sends those blocks raw, in one answer, resumable.
    response = agent.get(entry["data_url"] + "?ranges=0/5,0/20-21")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    body = b"".join(response.streaming_content)
    assert body == NOISY_NEXT[5 * BLOCK : 6 * BLOCK] + NOISY_NEXT[20 * BLOCK : 22 * BLOCK]
    assert int(response["Content-Length"]) == len(body)
    part = agent.get(entry["data_url"] + "?ranges=0/5,0/20-21", HTTP_RANGE="bytes=5000-")
    assert part.status_code == 206
    assert b"".join(part.streaming_content) == body[5000:]
    whole = agent.get(entry["data_url"] + "?ranges=0")
    b"".join(whole.streaming_content)
    assert part["ETag"] != whole["ETag"]


def test_a_range_that_changed_throughout_goes_whole(user, user_client, machine):
    image = ImageFactory(owner=user, target_disk="/dev/sda", compression="zstd")
    v0 = stored(image, 0, NOISY)
    v1 = stored(image, 1, noise(32, 9) + bytes(32 * BLOCK))
    record(machine, v0)
    _, entry = deploy(user_client, machine, user, v1)
    assert [index for index, _, _ in entry["delta"]["ranges"]] == [0]
    assert entry["delta"]["parts"] == []


@pytest.mark.parametrize("spec", ["0/32", "0/3,0/2", "0/2-1", "0/1,0", "0,0/1", "1/0", "0/1/2"])
def test_a_bad_choice_of_blocks_is_a_plain_400(user, user_client, machine, spec):
    image = ImageFactory(owner=user, target_disk="/dev/sda", compression="zstd")
    v1 = stored(image, 1, NOISY)
    agent, entry = deploy(user_client, machine, user, v1)
    response = agent.get(entry["data_url"] + "?ranges=" + spec)
    assert response.status_code == 400
    assert "ranges" in response.json()["errors"]


# Four MiB of incompressible data in one range: blocks asked for at its head, across the
# decoder's pieces, and at its end are decoded from its one frame, as far as they reach.
WIDE = noise(1024, 4)


@pytest.mark.parametrize(
    "runs",
    [[(3, 4)], [(63, 65)], [(0, 1), (64, 128), (700, 701)], [(1023, 1024)], [(3, 4), (1023, 1024)]],
)
def test_blocks_of_a_large_range_come_decoded_from_its_frame(user, user_client, machine, runs):
    image = ImageFactory(owner=user, target_disk="/dev/sda", compression="zstd")
    v1 = stored(image, 1, WIDE)
    assert v1.stored_compression == "zstd"
    agent, entry = deploy(user_client, machine, user, v1)
    spec = ",".join(
        f"0/{start}" if end == start + 1 else f"0/{start}-{end - 1}" for start, end in runs
    )
    response = agent.get(entry["data_url"] + "?ranges=" + spec)
    assert response.status_code == 200
    expected = b"".join(WIDE[start * BLOCK : end * BLOCK] for start, end in runs)
    assert b"".join(response.streaming_content) == expected
