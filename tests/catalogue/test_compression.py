"""Background compression: versions rewritten to their image's compression, swapped safely.

Service tests run the job in-process on the real database and disk; the
``worker`` tests run it through a real Celery worker on Redis.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import urllib.request

import pytest
import zstandard

from catalogue.models import Compression, Version
from catalogue.services.compression import (
    VersionCorrupt,
    encoder_for,
    needs_frames,
    version_compress,
)
from catalogue.services.datamaps import version_map, version_map_build
from catalogue.services.pipeline import image_process, version_process
from catalogue.storage import MAP_SUFFIX, get_storage
from catalogue.tasks import version_advance_task
from diskimage.datamap import empty_map
from diskimage.seekable import FramedZstdEncoder, read_seek_table, zeros_in_frames
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.conftest import client_for

# Compressible but not trivial, with a long run of zeros that must stay a hole when raw.
CONTENT = (b"BAAS image block " * 60_000) + bytes(4 * 1024 * 1024) + os.urandom(50_000)


def files_of(version) -> set[str]:
    """The names of the files in the version's image directory, ``.part`` ones included
    (not the data maps, which a compression job may have had built meanwhile)."""
    directory = get_storage().image_dir(version.image_id)
    return {path.name for path in directory.iterdir() if not path.name.endswith(MAP_SUFFIX)}


def decode(path, compression: str) -> bytes:
    data = path.read_bytes()
    if compression == Compression.ZSTD:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if compression == Compression.GZIP:
        return gzip.decompress(data)
    return data


def make_version(compression: str, content: bytes = CONTENT, number: int = 0) -> Version:
    image = ImageFactory(compression=compression)
    return VersionFactory(image=image, number=number, content=content)


def path_of(version, compression: str):
    return get_storage().version_path(version.image_id, version.number, compression)


@pytest.fixture
def compress(django_capture_on_commit_callbacks):
    """Run the job in-process; its after-commit clean-up runs as after a real commit."""

    def run(version_id: int):
        with django_capture_on_commit_callbacks(execute=True):
            return version_compress(version_id=version_id)

    return run


# --- The job, in-process ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("compression", "suffix"), [(Compression.ZSTD, ".img.zst"), (Compression.GZIP, ".img.gz")]
)
def test_it_compresses_a_raw_version_and_removes_the_raw_file(compression, suffix, compress):
    version = make_version(compression)

    outcome = compress(version.pk)

    version.refresh_from_db()
    assert outcome.changed
    assert version.stored_compression == compression
    assert files_of(version) == {f"0{suffix}"}
    stored = path_of(version, compression)
    assert decode(stored, compression) == CONTENT
    assert version.stored_size == stored.stat().st_blocks * 512
    assert version.stored_size < len(CONTENT) / 10
    assert version.size == len(CONTENT)
    assert version.sha256 == hashlib.sha256(CONTENT).hexdigest()


@pytest.mark.django_db
def test_it_decompresses_back_to_a_sparse_raw_file(compress):
    version = make_version(Compression.ZSTD)
    compress(version.pk)
    version.image.compression = Compression.NONE
    version.image.save()

    compress(version.pk)

    version.refresh_from_db()
    raw = path_of(version, Compression.NONE)
    assert version.stored_compression == Compression.NONE
    assert files_of(version) == {"0.img"}
    assert raw.read_bytes() == CONTENT
    assert raw.stat().st_blocks * 512 < len(CONTENT) - 3 * 1024 * 1024  # the zeros are a hole


@pytest.mark.django_db
def test_it_goes_from_one_compression_to_another(compress):
    version = make_version(Compression.GZIP)
    compress(version.pk)
    version.image.compression = Compression.ZSTD
    version.image.save()

    compress(version.pk)

    version.refresh_from_db()
    assert version.stored_compression == Compression.ZSTD
    assert files_of(version) == {"0.img.zst"}
    assert decode(path_of(version, Compression.ZSTD), Compression.ZSTD) == CONTENT


@pytest.mark.django_db
def test_running_it_twice_changes_nothing_the_second_time(compress):
    version = make_version(Compression.ZSTD)
    compress(version.pk)
    before = path_of(version, Compression.ZSTD).stat()

    outcome = compress(version.pk)

    assert not outcome.changed
    after = path_of(version, Compression.ZSTD).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.django_db
def test_it_refuses_to_swap_a_version_whose_bytes_do_not_match_its_sha256(compress):
    version = make_version(Compression.ZSTD)
    raw = path_of(version, Compression.NONE)
    with raw.open("r+b") as file:
        file.seek(1000)
        file.write(b"bit rot")

    with pytest.raises(VersionCorrupt):
        compress(version.pk)

    version.refresh_from_db()
    assert version.stored_compression == Compression.NONE
    assert files_of(version) == {"0.img"}  # untouched, and no .part left behind
    assert "SHA-256" in version.damaged  # and shown as damaged with the version


@pytest.mark.django_db
def test_after_a_crash_before_the_swap_it_adopts_the_verified_file(compress):
    version = make_version(Compression.ZSTD)
    encoder = encoder_for(Compression.ZSTD, len(CONTENT))
    leftover = path_of(version, Compression.ZSTD)
    leftover.write_bytes(encoder.compress(CONTENT) + encoder.flush())
    inode = leftover.stat().st_ino

    compress(version.pk)

    version.refresh_from_db()
    assert version.stored_compression == Compression.ZSTD
    assert files_of(version) == {"0.img.zst"}
    assert path_of(version, Compression.ZSTD).stat().st_ino == inode


@pytest.mark.django_db
def test_after_a_crash_it_replaces_a_leftover_file_that_does_not_verify(compress):
    version = make_version(Compression.GZIP)
    path_of(version, Compression.GZIP).write_bytes(gzip.compress(b"something else"))

    compress(version.pk)

    version.refresh_from_db()
    assert version.stored_compression == Compression.GZIP
    assert decode(path_of(version, Compression.GZIP), Compression.GZIP) == CONTENT


@pytest.mark.django_db
def test_after_a_crash_after_the_swap_it_removes_the_old_file(compress):
    version = make_version(Compression.ZSTD)
    compress(version.pk)
    old = path_of(version, Compression.NONE)
    old.write_bytes(CONTENT)  # the old raw file, as if the job died before unlinking it

    outcome = compress(version.pk)

    assert not outcome.changed
    assert files_of(version) == {"0.img.zst"}


@pytest.mark.django_db
def test_a_version_deleted_meanwhile_is_skipped(compress):
    version = make_version(Compression.ZSTD)
    version_id = version.pk
    version.delete()

    assert compress(version_id) is None


@pytest.mark.django_db
def test_a_download_opened_before_the_swap_completes_with_the_old_bytes(compress, user):
    image = ImageFactory(owner=user, compression=Compression.ZSTD)
    version = VersionFactory(image=image, number=0, content=CONTENT)
    response = client_for(user).get(f"/api/image/{image.uuid}/0")
    stream = iter(response.streaming_content)
    first = next(stream)

    compress(version.pk)
    assert files_of(version) == {"0.img.zst"}  # the raw file is unlinked, still open

    assert first + b"".join(stream) == CONTENT


@pytest.mark.django_db
def test_a_download_after_the_swap_gets_the_compressed_file(compress, user):
    image = ImageFactory(owner=user, compression=Compression.ZSTD, name="swapped")
    version = VersionFactory(image=image, number=0, content=CONTENT)
    compress(version.pk)

    response = client_for(user).get(f"/api/image/{image.uuid}/0")

    assert response["Content-Disposition"] == 'attachment; filename="swapped-v0.img.zst"'
    assert decode_stream(response) == CONTENT


def decode_stream(response) -> bytes:
    return (
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress(b"".join(response.streaming_content))
    )


# --- Scheduling hooks and the task adapter ------------------------------------------


@pytest.mark.django_db
def test_a_version_already_stored_right_is_not_scheduled(django_capture_on_commit_callbacks):
    version = make_version(Compression.NONE)
    version_map_build(version_id=version.pk)  # (else it owes its map)

    with django_capture_on_commit_callbacks() as callbacks:
        scheduled = version_process(version.pk)

    assert not scheduled
    assert callbacks == []


@pytest.mark.django_db
def test_scheduling_waits_for_the_commit(django_capture_on_commit_callbacks):
    version = make_version(Compression.ZSTD)

    with django_capture_on_commit_callbacks() as callbacks:
        assert version_process(version.pk)
        image_process(version.image)

    assert len(callbacks) == 2  # sent only once the row is visible to a worker


@pytest.mark.django_db
def test_the_task_maps_then_compresses_one_step_a_run_then_does_nothing():
    version = make_version(Compression.ZSTD)

    runs = [version_advance_task.apply(args=[version.pk]).get() for _ in range(3)]

    assert runs == ["map: mapped", "compress: ready", "nothing: ready"]
    assert stored_as(version, Compression.ZSTD) and not needs_frames(version)  # in frames, once


# --- A real worker on Redis ------------------------------------------------------------


def wait_for(predicate, timeout: float = 60.0, what: str = "the worker") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out waiting for {what}")
        time.sleep(0.1)


def stored_as(version, compression: str) -> bool:
    version.refresh_from_db()
    return version.stored_compression == compression


def open_download(live_server, user, path: str):
    address = f"{live_server.url}{path}"  # the loopback test server
    request = urllib.request.Request(address, headers={"Authorization": f"Bearer {bearer(user)}"})  # noqa: S310
    return urllib.request.urlopen(request, timeout=30)  # noqa: S310


def bearer(user) -> str:
    from accounts.services import token_create

    return token_create(actor=user, user=user, name="worker-test")[1]


@pytest.mark.worker
def test_the_worker_compresses_a_new_version_while_a_download_runs(
    celery_worker, live_server, user
):
    content = os.urandom(8 * 1024 * 1024) + CONTENT  # larger than the socket buffers
    image = ImageFactory(owner=user, compression=Compression.ZSTD)
    version = VersionFactory(image=image, number=0, content=content)
    early = open_download(live_server, user, f"/api/image/{image.uuid}/0")
    head = early.read(65536)

    assert version_process(version.pk)

    def framed() -> bool:  # compressed; then, its map built, laid out in frames (rewritten)
        return stored_as(version, Compression.ZSTD) and (
            version_map(version) is not None and not needs_frames(version)
        )

    wait_for(framed, what="the compression job, the map job, then the compression job again")
    assert files_of(version) == {"0.img.zst"}
    assert head + early.read() == content  # opened before the swap: the old bytes, whole
    with open_download(live_server, user, f"/api/image/{image.uuid}/0?decompress=1") as raw:
        assert raw.read() == content
    with open_download(live_server, user, f"/api/image/{image.uuid}/latest") as stored:
        assert stored.headers["Content-Type"] == "application/zstd"
        frames = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=True)
        assert frames.read() == content  # in frames of its map: all of them


@pytest.mark.worker
def test_the_worker_recompresses_every_version_when_the_image_changes(celery_worker):
    image = ImageFactory(compression=Compression.NONE)
    versions = [
        VersionFactory(image=image, number=n, content=CONTENT + bytes([n])) for n in range(3)
    ]
    image.compression = Compression.GZIP
    image.save()

    image_process(image)
    wait_for(lambda: all(stored_as(v, Compression.GZIP) for v in versions), what="recompression")

    for n, version in enumerate(versions):
        assert files_of(version) >= {f"{n}.img.gz"}
        assert decode(path_of(version, Compression.GZIP), Compression.GZIP) == CONTENT + bytes([n])
    assert not any(path_of(v, Compression.NONE).exists() for v in versions)


# --- Version 0 of a zstd image ---------------------------------------------------------------


def test_zero_frames_are_what_the_framed_encoder_writes_for_an_image_without_data():
    size = 5 * 1024 * 1024 + 3
    encoder = FramedZstdEncoder(empty_map(size, ""), level=3)
    assert zeros_in_frames(size) == encoder.compress(bytes(size)) + encoder.flush()


@pytest.mark.django_db
def test_a_zstd_image_is_created_with_version_0_in_frames_and_no_job(
    user, user_client, django_capture_on_commit_callbacks, settings, tmp_path
):
    settings.BAAS_NEW_IMAGE_SIZE = (2 << 30) + 4096  # three frames, the last a short one
    with django_capture_on_commit_callbacks() as callbacks:
        response = user_client.post(
            f"/api/user/{user.username}/image",
            {"name": "zeros", "compression": "zstd", "target_disk": "/dev/sda"},
            format="json",
        )
    assert response.status_code == 201, response.json()
    assert response.json()["versions"][0]["size"] == settings.BAAS_NEW_IMAGE_SIZE
    version = Version.objects.get(image_id=response.json()["uuid"], number=0)
    assert version.stored_compression == Compression.ZSTD
    assert not version_process(version.pk)  # nothing left for a worker
    assert callbacks == []
    path = path_of(version, Compression.ZSTD)
    assert path.stat().st_size < 300 * 1024  # 2 GiB of zeros
    with path.open("rb") as file:
        frames = read_seek_table(file.fileno())
    assert [frame.size for frame in frames] == [1 << 30, 1 << 30, 4096]
    head = zstandard.ZstdDecompressor().stream_reader(path.open("rb"), read_across_frames=True)
    with head:
        assert head.read(1 << 20) == bytes(1 << 20)
