"""Block hashes are kept per range once computed (``RangeHashes``), and never used stale."""

from __future__ import annotations

import pytest

from catalogue.models import Compression, RangeHashes
from catalogue.services.datamaps import version_map
from catalogue.storage import get_storage
from diskimage.sparsedelta import block_hashes
from tests.catalogue.factories import ImageFactory
from tests.catalogue.test_delta_upload import disk_like, stored_version

pytestmark = pytest.mark.django_db


def hashes(client, image, spec: str) -> bytes:
    answer = client.get(f"/api/image/{image.uuid}/1/hashes?ranges={spec}")
    assert answer.status_code == 200
    return b"".join(answer.streaming_content)


@pytest.fixture
def base(image):
    return stored_version(image, 1, disk_like(1), Compression.ZSTD)


@pytest.fixture
def image(user):
    return ImageFactory(owner=user)


def expected(datamap, index: int) -> bytes:
    start, end, _ = datamap.ranges[index]
    return block_hashes(disk_like(1)[start:end])


def test_the_block_hashes_asked_for_are_kept_and_served_again_without_the_file(
    user_client, image, base
):
    datamap = version_map(base)
    first = hashes(user_client, image, "0,2")
    assert first == expected(datamap, 0) + expected(datamap, 2)
    kept = dict(RangeHashes.objects.filter(version=base).values_list("index", "hashes"))
    assert sorted(kept) == [0, 2]
    assert bytes(kept[2]) == expected(datamap, 2)
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


def test_kept_hashes_go_with_their_version(user_client, image, base):
    hashes(user_client, image, "0-2")
    assert RangeHashes.objects.filter(version=base).count() == 3
    base.delete()
    assert not RangeHashes.objects.exists()
