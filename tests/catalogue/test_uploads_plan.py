"""An upload's plan is chosen once from the request, the image and the first bytes; its
stages stop together when one fails or the client goes away, and leave no file behind."""

from __future__ import annotations

import gzip
import os
import resource
import threading

import pytest
import zstandard

from catalogue.exceptions import ClientDisconnected, UploadTooLarge
from catalogue.models import Compression, FileStandard, Version
from catalogue.services.uploads import (
    Storing,
    UploadOptions,
    VersionReceiver,
    plan_upload,
    version_upload,
)
from catalogue.storage import get_storage
from diskimage.sparse import DONT_CARE
from tests.catalogue.factories import ImageFactory
from tests.diskimage.test_sparse import sparse

MiB = 1 << 20
LIMIT = 64 * MiB
ZSTD_HEAD = zstandard.ZstdCompressor().compress(bytes(MiB))


def options(**kwargs) -> UploadOptions:
    return UploadOptions(**{"max_size": 1 << 40, "sha256_limit": LIMIT, **kwargs})


@pytest.fixture
def image(user):
    return ImageFactory(owner=user)


def test_a_small_raw_upload_is_decoded_mapped_and_hashed_now(image):
    plan = plan_upload(image=image, options=options(), declared=None, head=b"\1" * 64)
    assert (plan.encoding, plan.storing, plan.sha256_now) == ("none", Storing.RAW, True)
    assert plan.stored_compression == Compression.NONE
    assert not plan.wire_sha256


def test_a_large_zstd_upload_of_a_raw_image_is_stored_as_sent_undecoded(image):
    plan = plan_upload(
        image=image, options=options(raw_at_least=LIMIT + 1), declared=None, head=ZSTD_HEAD
    )
    assert (plan.encoding, plan.storing, plan.sha256_now) == (
        "zstd",
        Storing.AS_SENT_UNDECODED,
        False,
    )
    assert not plan.decodes
    assert plan.stored_compression == Compression.ZSTD


def test_a_zstd_upload_whose_digest_is_wanted_now_is_decoded(image):
    big = options(raw_at_least=LIMIT + 1, sha256_limit=None)
    plan = plan_upload(image=image, options=big, declared=None, head=ZSTD_HEAD)
    assert (plan.storing, plan.sha256_now, plan.sha256_limit) == (Storing.RAW, True, None)


def test_a_large_zstd_upload_of_a_qcow2_image_is_decoded(user):
    qcow2 = ImageFactory(owner=user, file_standard=FileStandard.QCOW2)
    plan = plan_upload(
        image=qcow2, options=options(raw_at_least=LIMIT + 1), declared=None, head=ZSTD_HEAD
    )
    assert (plan.storing, plan.sha256_now) == (Storing.RAW, False)


def test_a_gzip_image_sent_gzip_is_mapped_but_stored_as_sent(user):
    gzipped = ImageFactory(owner=user, compression=Compression.GZIP)
    head = gzip.compress(bytes(4096))
    plan = plan_upload(image=gzipped, options=options(), declared=None, head=head)
    assert (plan.encoding, plan.storing, plan.wire_sha256) == ("gzip", Storing.AS_SENT, True)
    assert plan.decodes


def test_the_declared_encoding_wins_over_the_first_bytes(image):
    plan = plan_upload(image=image, options=options(), declared="none", head=ZSTD_HEAD)
    assert plan.encoding == "none"


def test_a_sparse_header_announcing_too_much_is_refused_before_a_byte_is_kept(image):
    head = sparse([(DONT_CARE, 1 << 18, b"")])  # 1 GiB of zeros in 40 bytes
    with pytest.raises(UploadTooLarge, match="announces"):
        plan_upload(image=image, options=options(max_size=MiB), declared=None, head=head)


# --- Failing mid-stream ------------------------------------------------------------------


def _files(image) -> list[str]:
    directory = get_storage().image_dir(image.uuid)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def file_size_limit():
    """Writes past 4 MiB fail with EFBIG (a real failure of a real write, on the writer's
    thread), as a disk that fills up mid-upload would."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, hard))
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_writer_that_fails_mid_stream_leaves_no_part_file_and_no_thread(
    image, user, file_size_limit
):
    before = set(threading.enumerate())
    receiver = VersionReceiver(image=image, max_size=1 << 40)
    with pytest.raises(OSError, match="too large"), receiver:
        for _ in range(64):
            receiver.write(os.urandom(MiB))
        version_upload(actor=user, image=image, receiver=receiver)
    assert _files(image) == []
    assert not Version.objects.filter(image=image).exists()
    assert set(threading.enumerate()) == before


def test_a_client_gone_mid_stream_leaves_no_part_file_and_no_thread(image):
    before = set(threading.enumerate())
    receiver = VersionReceiver(image=image, max_size=1 << 40, digest=True)
    with pytest.raises(ClientDisconnected), receiver:
        for _ in range(8):
            receiver.write(os.urandom(MiB))
        assert any(name.endswith(".part") for name in _files(image))  # being written
        raise ClientDisconnected()
    assert _files(image) == []
    assert set(threading.enumerate()) == before


def test_what_the_caller_records_with_the_version_commits_or_fails_with_it(image, user):
    """``recorded`` runs in the version's transaction (a resumable upload marks itself
    complete there): whatever it writes lands with the row, and a failure in it leaves no
    row, no map and no file."""
    data = os.urandom(MiB)
    receiver = VersionReceiver(image=image, max_size=1 << 40)
    with pytest.raises(RuntimeError, match="refused"), receiver:
        receiver.write(data)

        def refuse(version: Version) -> None:
            assert Version.objects.filter(pk=version.pk).exists()  # inside, before commit
            raise RuntimeError("refused")

        version_upload(actor=user, image=image, receiver=receiver, recorded=refuse)
    assert not Version.objects.filter(image=image).exists()
    assert _files(image) == []

    noted: list[int] = []
    receiver = VersionReceiver(image=image, max_size=1 << 40)
    with receiver:
        receiver.write(data)
        version = version_upload(
            actor=user, image=image, receiver=receiver, recorded=lambda v: noted.append(v.pk)
        )
    assert noted == [version.pk]
    assert version.number == 1 and version.size == MiB
