"""Delta uploads: a base version's stored data plus a disk's changes become the next version.

Through the API as a client sends them (``Upload-Base-Version``, a sparse image
whose "don't care" chunks mean "as in the base", ``Upload-Map-Digest``), with
the base's block hashes from ``GET …/hashes``; then the stored file, the row
and the audit log are checked, and every refusal leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounts.models import AuditEvent
from catalogue.models import Compression, Version
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map, version_map_build
from catalogue.storage import get_storage
from diskimage import BLOCK
from diskimage.changes import changed_runs, disk_map, suspects
from diskimage.selection import format_selection, parse_selection
from diskimage.sparse import MEDIA_TYPE
from diskimage.sparsedelta import HASH_BYTES, Run, block_hashes, delta_stream, map_digest
from tests.catalogue.factories import ImageFactory, write_version

MiB = 1 << 20


def disk_like(seed: int) -> bytes:
    """4 MiB: three runs of pseudo-random data between zeros (a few ranges of a map)."""
    rows = [hashlib.sha256(f"{seed}-{i}".encode()).digest() * (BLOCK // 32) for i in range(256)]
    data = b"".join(rows)  # 1 MiB
    return data + bytes(MiB) + data[: MiB // 2] + bytes(MiB) + data[MiB // 2 :]


def changed(base: bytes, edits: dict[int, bytes]) -> bytes:
    disk = bytearray(base)
    for offset, content in edits.items():
        disk[offset : offset + len(content)] = content
    return bytes(disk)


@pytest.fixture
def image(user):
    return ImageFactory(owner=user)


def stored_version(image, number: int, content: bytes, compression: str = "none") -> Version:
    version = write_version(image, number, content)
    version_map_build(version_id=version.pk)
    if compression != "none":
        image.compression = compression
        image.save(update_fields=["compression"])
        version_compress(version_id=version.pk)
        version.refresh_from_db()
    return version


def delta_for(client, tmp_path: Path, base: Version, disk: bytes) -> tuple[bytes, str, list[Run]]:
    """What a client holding ``disk`` (flashed with ``base``) sends: the delta and map digest."""
    path = tmp_path / "disk.img"
    path.write_bytes(disk)
    base_map = version_map(base)
    assert base_map is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        found = disk_map(fd, len(disk), sparse=True)
        suspect = suspects(base_map, found)
        hashes = {}
        if suspect:
            spans = ",".join(str(i) for i in suspect)
            answer = client.get(f"/api/image/{base.image_id}/{base.number}/hashes?ranges={spans}")
            assert answer.status_code == 200, answer.content
            data = b"".join(answer.streaming_content)
            position = 0
            for index in suspect:
                start, end, _ = base_map.ranges[index]
                size = -(-(end - start) // BLOCK) * HASH_BYTES
                hashes[index] = data[position : position + size]
                position += size
            assert position == len(data)
        runs = changed_runs(fd, base_map, found, suspect, hashes)
    finally:
        os.close(fd)
    delta = b"".join(delta_stream(runs, len(disk), lambda s, e: disk[s:e]))
    return delta, map_digest(found), runs


def post_delta(client, image, delta: bytes, base: int | str, digest: str | None = None, **extra):
    headers = {"HTTP_UPLOAD_BASE_VERSION": str(base), **extra}
    if digest is not None:
        headers["HTTP_UPLOAD_MAP_DIGEST"] = digest
    content_type = headers.pop("content_type", MEDIA_TYPE)
    return client.generic(
        "POST", f"/api/image/{image.uuid}", delta, content_type=content_type, **headers
    )


def stored_bytes(version: Version) -> bytes:
    path = get_storage().version_path(version.image_id, version.number, version.stored_compression)
    data = path.read_bytes()
    return data + bytes(version.size - len(data))


def snapshot(image) -> tuple[list, list[str]]:
    directory = get_storage().image_dir(image.uuid)
    files = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
    return list(image.versions.values_list("number", "sha256")), files


EDITS = {8 * BLOCK + 100: b"a changed config line", 2 * MiB + 40 * BLOCK: os.urandom(3 * BLOCK)}


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD])
def test_a_delta_becomes_the_next_version_made_of_the_base_and_the_changes(
    user_client, image, tmp_path, compression
):
    base = stored_version(image, 1, disk_like(1), compression)
    disk = changed(disk_like(1), {**EDITS, 3 * MiB: bytes(BLOCK)})  # some data became zeros
    delta, digest, runs = delta_for(user_client, tmp_path, base, disk)
    assert len(delta) < 8 * BLOCK  # the changes, not the 2 MiB of data
    response = post_delta(user_client, image, delta, 1, digest)
    assert response.status_code == 201, response.content
    answer = response.json()
    assert (answer["version"], answer["based_on"], answer["size"]) == (2, 1, len(disk))
    assert answer["sha256"] == hashlib.sha256(disk).hexdigest()
    version = Version.objects.get(image=image, number=2)
    assert version.based_on == 1
    assert stored_bytes(version) == disk
    event = AuditEvent.objects.get(action="version.delta")
    assert event.data["delta_bytes"] == len(delta)
    assert event.data["carried_bytes"] == sum(r.length for r in runs)
    assert event.data["based_on"] == 1


def test_a_delta_against_an_older_version_is_that_version_plus_the_changes(
    user_client, image, tmp_path
):
    base = stored_version(image, 1, disk_like(1))
    later = stored_version(image, 2, disk_like(2))  # someone uploaded since the flash
    disk = changed(disk_like(1), EDITS)
    delta, digest, _ = delta_for(user_client, tmp_path, base, disk)
    response = post_delta(user_client, image, delta, 1, digest)
    assert response.status_code == 201, response.content
    made = Version.objects.get(image=image, number=3)
    assert (made.based_on, stored_bytes(made)) == (1, disk)  # not merged with version 2
    assert stored_bytes(Version.objects.get(pk=later.pk)) == disk_like(2)  # nothing lost
    assert AuditEvent.objects.get(action="version.delta").data["latest_was"] == 2


def test_the_same_delta_again_makes_another_version_with_the_same_bytes(
    user_client, image, tmp_path
):
    base = stored_version(image, 1, disk_like(1))
    delta, digest, _ = delta_for(user_client, tmp_path, base, changed(disk_like(1), EDITS))
    first = post_delta(user_client, image, delta, 1, digest).json()
    second = post_delta(user_client, image, delta, 1, digest).json()
    assert (first["version"], second["version"]) == (2, 3)
    assert first["sha256"] == second["sha256"]


def refused(client, image, delta, base, digest=None, **extra):
    before = snapshot(image)
    response = post_delta(client, image, delta, base, digest, **extra)
    assert snapshot(image) == before, "something was stored"
    return response


def test_a_delta_whose_result_is_not_the_disk_s_map_is_refused(user_client, image, tmp_path):
    base = stored_version(image, 1, disk_like(1))
    delta, _, _ = delta_for(user_client, tmp_path, base, changed(disk_like(1), EDITS))
    other = map_digest(version_map(base))  # e.g. the disk changed since it was mapped
    response = refused(user_client, image, delta, 1, other)
    assert response.status_code == 400
    assert "Upload-Map-Digest" in response.json()["detail"]


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda d: d[:-7], id="cut short"),
        pytest.param(lambda d: d[:28] + b"\xc1\xca\0\0\xff\xff\0\0" + d[36:], id="bad chunk"),
        pytest.param(lambda d: os.urandom(64) + d, id="not sparse"),
        pytest.param(lambda d: d[:-BLOCK] + os.urandom(BLOCK), id="tampered data"),
    ],
)
def test_a_tampered_or_ill_formed_delta_is_refused_and_nothing_is_stored(
    user_client, image, tmp_path, mangle
):
    base = stored_version(image, 1, disk_like(1))
    disk = changed(disk_like(1), EDITS)
    delta, digest, _ = delta_for(user_client, tmp_path, base, disk)
    response = refused(user_client, image, mangle(delta), 1, digest)
    assert response.status_code == 400, response.content


def test_a_delta_of_another_size_than_its_base_is_refused(user_client, image, tmp_path):
    base = stored_version(image, 1, disk_like(1))
    delta = b"".join(delta_stream([], base.size + MiB, lambda s, e: b""))
    response = refused(user_client, image, delta, 1)
    assert response.status_code == 400
    assert "its base holds" in response.json()["detail"]


def test_a_base_that_does_not_exist_is_named_in_plain_words(user_client, image):
    stored_version(image, 1, disk_like(1))
    delta = b"".join(delta_stream([], len(disk_like(1)), lambda s, e: b""))
    response = refused(user_client, image, delta, 7)
    assert response.status_code == 404
    assert "Version 7 of this image does not exist" in response.json()["detail"]
    assert refused(user_client, image, delta, "seven").status_code == 400


def test_a_delta_to_an_image_the_uploader_may_not_read_answers_404(other_client, image):
    stored_version(image, 1, disk_like(1))
    delta = b"".join(delta_stream([], len(disk_like(1)), lambda s, e: b""))
    assert refused(other_client, image, delta, 1).status_code == 404
    answer = other_client.get(f"/api/image/{image.uuid}/1/hashes?ranges=0")
    assert answer.status_code == 404


def test_a_delta_is_a_plain_sparse_body(user_client, image):
    stored_version(image, 1, disk_like(1))
    delta = b"".join(delta_stream([], len(disk_like(1)), lambda s, e: b""))
    zstd = refused(user_client, image, delta, 1, HTTP_CONTENT_ENCODING="zstd")
    assert zstd.status_code == 400
    assert "sparse image" in zstd.json()["detail"]


def test_block_hashes_are_the_base_s_blocks(user_client, image):
    base = stored_version(image, 1, disk_like(1), Compression.ZSTD)
    datamap = version_map(base)
    answer = user_client.get(f"/api/image/{image.uuid}/1/hashes?ranges=0,{len(datamap.ranges) - 1}")
    assert answer.status_code == 200
    first, last = datamap.ranges[0], datamap.ranges[-1]
    expected = block_hashes(disk_like(1)[first[0] : first[1]])
    expected += block_hashes(disk_like(1)[last[0] : last[1]])
    assert b"".join(answer.streaming_content) == expected
    assert int(answer["Content-Length"]) == len(expected)
    for bad in ("", "1,0", "0-", f"{len(datamap.ranges)}", "a"):
        assert user_client.get(f"/api/image/{image.uuid}/1/hashes?ranges={bad}").status_code == 400


@given(st.sets(st.integers(0, 2000), min_size=1, max_size=300))
def test_the_agent_s_range_lists_are_what_the_server_reads(indices):
    wanted = sorted(indices)
    assert parse_selection(format_selection(wanted), 2001) == wanted


@pytest.mark.parametrize("with_digest", [True, False])  # the base read unchecked, or checked
@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD])
def test_a_base_whose_stored_bytes_went_bad_is_refused_and_marked_damaged(
    user_client, image, tmp_path, compression, with_digest
):
    base = stored_version(image, 1, disk_like(1), compression)
    delta, digest, _ = delta_for(user_client, tmp_path, base, changed(disk_like(1), EDITS))
    path = get_storage().version_path(image.uuid, 1, base.stored_compression)
    with path.open("r+b") as file:  # bit rot in the middle of the stored file
        file.seek(path.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x40]))
    response = refused(user_client, image, delta, 1, digest if with_digest else None)
    assert response.status_code == 400
    assert "cannot be the base" in response.json()["detail"]
    base.refresh_from_db()
    assert base.damaged


def test_a_delta_is_never_kept_as_a_resumable_upload(user_client, image):
    stored_version(image, 1, disk_like(1))
    delta = b"".join(delta_stream([], len(disk_like(1)), lambda s, e: b""))
    response = refused(user_client, image, delta, 1, HTTP_UPLOAD_COMPLETE="?0")
    assert response.status_code == 400
    assert "resumable" in response.json()["detail"]
