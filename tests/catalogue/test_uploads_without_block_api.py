"""Uploads where libzstd's block API is missing: zstd is decoded by the stream decoder,
slower, with the same result. ``BAAS_ZSTD_BLOCK_API=off`` stands in for an old or
missing libzstd; the tests are those of the uploads with zstd, run again so."""

from __future__ import annotations

import pytest

from diskimage import zstdblocks
from tests.catalogue import test_uploads
from tests.catalogue.test_uploads import MiB, image  # noqa: F401 - the fixture


@pytest.fixture(autouse=True)
def _without_block_api(monkeypatch, settings):
    settings.BAAS_NEW_IMAGE_SIZE = 4 * MiB
    monkeypatch.setenv(zstdblocks.SWITCH, "off")
    assert not zstdblocks.available()


def test_a_zstd_upload_is_stored_raw_with_its_holes(user_client, image):  # noqa: F811
    test_uploads.test_a_zstd_upload_is_stored_raw_for_an_uncompressed_image(user_client, image)


def test_a_zstd_upload_to_a_zstd_image_is_usable_at_once_then_stored_in_frames(
    user_client, user, django_capture_on_commit_callbacks
):
    test_uploads.test_a_zstd_upload_to_a_zstd_image_is_usable_at_once_then_stored_in_frames(
        user_client, user, django_capture_on_commit_callbacks
    )


def test_a_truncated_zstd_upload_is_refused(user_client, image):  # noqa: F811
    test_uploads.test_a_truncated_zstd_upload_is_refused(user_client, image)
