"""Block hashes are computed in the pass that stores a version and kept per range
(``RangeHashes``); a version stored before has them computed on first use; none is ever
used stale, or kept for bytes that turned out not to be the version's."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from catalogue.models import Compression, FileStandard, RangeHashes, Version
from catalogue.services.codecs import VersionCorrupt
from catalogue.services.compression import version_compress
from catalogue.services.datamaps import version_map, version_map_build
from catalogue.services.digests import version_digest_complete
from catalogue.services.lifecycle import versions_prune
from catalogue.services.rangehashes import BlockHasher, MappedFeed, hashes_kept
from catalogue.storage import get_storage
from diskimage import BLOCK
from diskimage.datamap import DataMapper
from diskimage.sparsedelta import block_hashes
from tests.catalogue.factories import ImageFactory, write_version
from tests.catalogue.test_delta_upload import disk_like, stored_version

pytestmark = pytest.mark.django_db
MiB = 1 << 20


def hashes(client, image, spec: str, number: int = 1) -> bytes:
    answer = client.get(f"/api/image/{image.uuid}/{number}/hashes?ranges={spec}")
    assert answer.status_code == 200
    return b"".join(answer.streaming_content)


@pytest.fixture
def image(user):
    return ImageFactory(owner=user)


@pytest.fixture
def base(image):
    """A version stored before its hashes were kept when stored (none kept)."""
    version = stored_version(image, 1, disk_like(1), Compression.ZSTD)
    RangeHashes.objects.filter(version=version).delete()
    return version


def expected(datamap, index: int, content: bytes | None = None) -> bytes:
    start, end, _ = datamap.ranges[index]
    return block_hashes((disk_like(1) if content is None else content)[start:end])


def kept(version) -> dict[int, bytes]:
    rows = RangeHashes.objects.filter(version=version).values_list("index", "hashes")
    return {index: bytes(found) for index, found in rows}


def every_range(version, content: bytes) -> dict[int, bytes]:
    datamap = version_map(version)
    return {index: expected(datamap, index, content) for index in range(len(datamap.ranges))}


# --- Kept when the version is stored ------------------------------------------------------


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD, Compression.GZIP])
def test_a_stored_version_has_every_ranges_hashes_kept_by_the_pass_that_read_it(image, compression):
    version = stored_version(image, 1, disk_like(1), compression)
    assert len(version_map(version).ranges) == 3
    assert kept(version) == every_range(version, disk_like(1))
    assert hashes_kept(version, version_map(version))


def test_the_hashes_api_answers_from_them_without_the_stored_file(user_client, image):
    version = stored_version(image, 1, disk_like(1), Compression.ZSTD)
    get_storage().version_path(image.uuid, 1, version.stored_compression).unlink()
    datamap = version_map(version)
    assert hashes(user_client, image, "0-2") == b"".join(expected(datamap, i) for i in range(3))


def test_a_pass_after_the_one_that_kept_them_does_not_hash_again(image):
    version = write_version(image, 1, disk_like(1))
    version_map_build(version_id=version.pk)  # the map step hashes...
    RangeHashes.objects.filter(version=version, index=1).update(hashes=b"\0" * 16 * 256)
    image.compression = Compression.ZSTD
    image.save(update_fields=["compression"])
    version_compress(version_id=version.pk)  # ...the compression step finds them kept
    assert kept(version)[1] == b"\0" * 16 * 256


def test_the_compression_step_hashes_a_version_mapped_before_hashes_were_kept(image):
    version = stored_version(image, 1, disk_like(1))  # raw, mapped
    RangeHashes.objects.filter(version=version).delete()
    image.compression = Compression.ZSTD
    image.save(update_fields=["compression"])
    version_compress(version_id=version.pk)
    version.refresh_from_db()
    assert version.stored_compression == Compression.ZSTD
    assert kept(version) == every_range(version, disk_like(1))


def test_the_digest_step_of_a_large_upload_keeps_them_in_its_read(image):
    version = write_version(image, 1, disk_like(2))
    Version.objects.filter(pk=version.pk).update(sha256="")  # left to the job
    digest = version_digest_complete(version_id=version.pk)
    assert digest == hashlib.sha256(disk_like(2)).hexdigest()
    version.refresh_from_db()
    assert kept(version) == every_range(version, disk_like(2))


def test_the_compression_step_that_digests_a_large_upload_keeps_them_too(image):
    image.compression = Compression.GZIP
    image.save(update_fields=["compression"])
    version = write_version(image, 1, disk_like(3))
    Version.objects.filter(pk=version.pk).update(sha256="")
    version_compress(version_id=version.pk)
    version.refresh_from_db()
    assert version.sha256 and version.stored_compression == Compression.GZIP
    assert kept(version) == every_range(version, disk_like(3))


def test_no_hashes_are_kept_for_bytes_that_are_not_the_versions(image):
    version = write_version(image, 1, disk_like(1))
    Version.objects.filter(pk=version.pk).update(sha256="ab" * 32)  # not what the file holds
    version.refresh_from_db()
    version_map_build(version_id=version.pk)
    RangeHashes.objects.filter(version=version).delete()
    image.compression = Compression.ZSTD
    image.save(update_fields=["compression"])
    with pytest.raises(VersionCorrupt):
        version_compress(version_id=version.pk)
    assert not RangeHashes.objects.filter(version=version).exists()


def test_a_qcow2_version_has_none(image):
    image.file_standard = FileStandard.QCOW2
    image.save(update_fields=["file_standard"])
    version = write_version(image, 1, disk_like(1))
    Version.objects.filter(pk=version.pk).update(sha256="")
    version_digest_complete(version_id=version.pk)
    assert not RangeHashes.objects.exists()


# --- The hasher: the same hashes whatever the pieces ----------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_the_hasher_gives_each_ranges_block_hashes_whatever_pieces_it_is_fed(seed):
    rng = random.Random(seed)  # noqa: S311 - test data
    image = bytearray(8 * MiB + 1234)  # a short last block
    for _ in range(6):
        start = rng.randrange(0, len(image) // BLOCK) * BLOCK
        image[start : start + rng.randrange(1, 3 * MiB)] = rng.randbytes(3 * MiB)[
            : len(image) - start
        ]
    image[-5:] = b"tail!"
    data = bytes(image[: len(image)])
    by_mapper, by_map = BlockHasher(), BlockHasher()
    mapper = DataMapper(by_mapper.data)
    position = 0
    pieces = []
    while position < len(data):
        step = rng.choice([1, 100, BLOCK - 1, BLOCK, 65537, MiB])
        pieces.append(data[position : position + step])
        position += step
    for piece in pieces:
        mapper.update(piece)
    datamap = mapper.finish(hashlib.sha256(data).hexdigest())
    feed = MappedFeed(datamap, by_map)
    for piece in pieces:
        feed.update(piece)
    want = b"".join(block_hashes(data[start:end]) for start, end, _ in datamap.ranges)
    with by_mapper, by_map:
        assert by_mapper.finish().read() == want
        assert by_map.finish().read() == want


def test_the_hasher_hands_on_a_view_of_a_buffer_read_into_again_as_a_copy():
    hasher = BlockHasher()
    buffer = bytearray(b"a" * BLOCK)
    hasher.data(memoryview(buffer), 0)
    buffer[:] = b"b" * BLOCK
    with hasher:
        assert hasher.finish().read() == block_hashes(b"a" * BLOCK)


# --- The lazy path, for versions stored before -----------------------------------------------


def test_the_block_hashes_asked_for_are_kept_and_served_again_without_the_file(
    user_client, image, base
):
    datamap = version_map(base)
    first = hashes(user_client, image, "0,2")
    assert first == expected(datamap, 0) + expected(datamap, 2)
    assert sorted(kept(base)) == [0, 2]
    assert kept(base)[2] == expected(datamap, 2)
    stored = base.image.versions.get(number=1)
    get_storage().version_path(image.uuid, 1, stored.stored_compression).unlink()
    assert hashes(user_client, image, "0,2") == first  # from what was kept


def test_hashes_kept_for_other_bytes_are_made_again(user_client, image, base):
    datamap = version_map(base)
    hashes(user_client, image, "1")
    RangeHashes.objects.filter(version=base, index=1).update(blake3="0" * 64, hashes=b"x" * 16)
    assert hashes(user_client, image, "1") == expected(datamap, 1)
    row = RangeHashes.objects.get(version=base, index=1)
    assert row.blake3 == datamap.blake3[1]


# --- They go with their version ----------------------------------------------------------


def test_kept_hashes_go_with_their_version(user_client, image, base):
    hashes(user_client, image, "0-2")
    assert RangeHashes.objects.filter(version=base).count() == 3
    base.delete()
    assert not RangeHashes.objects.exists()


def test_a_pruned_version_takes_its_hashes_and_leaves_the_others(
    image, django_capture_on_commit_callbacks
):
    old = stored_version(image, 1, disk_like(1))
    new = stored_version(image, 2, disk_like(2))
    assert RangeHashes.objects.filter(version=old).exists()
    image.keep_versions = 1
    image.save(update_fields=["keep_versions"])
    with django_capture_on_commit_callbacks(execute=True):
        assert versions_prune(image_uuid=image.uuid) == [1]
    assert set(RangeHashes.objects.values_list("version", flat=True)) == {new.pk}
    assert kept(new) == every_range(new, disk_like(2))


def test_the_spool_of_a_large_pass_goes_to_a_file_not_memory(monkeypatch):
    monkeypatch.setattr("catalogue.services.rangehashes.SPOOL", 1024)
    data = random.Random(5).randbytes(MiB)  # noqa: S311 - test data
    with BlockHasher() as hasher:
        hasher.data(data, 0)
        spool = hasher.finish()
        assert spool.read() == block_hashes(data)
        assert not isinstance(spool._file, io.BytesIO)  # rolled over to a temporary file
