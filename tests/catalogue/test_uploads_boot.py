"""Uploads to a boot image: only a boot partition BAAS can boot is stored."""

from __future__ import annotations

import gzip
import shutil

import pytest

from catalogue.models import ImageType, Version
from catalogue.services.bootfiles import boot_files_for, cache_dir
from catalogue.services.compression import version_compress
from tests.catalogue.factories import ImageFactory
from tests.catalogue.filesystems import INITRD, KERNEL, boot_files, ext4_image, fat_image
from tests.catalogue.test_uploads import files_of, post_raw

pytestmark = pytest.mark.django_db


@pytest.fixture
def boot(user):
    return ImageFactory(owner=user, type=ImageType.BOOT)


@pytest.mark.parametrize("make", [fat_image, ext4_image], ids=["fat", "ext4"])
def test_a_boot_partition_is_stored_and_its_files_extracted(user_client, boot, make, tmp_path):
    content = make(tmp_path / "boot.img", boot_files()).read_bytes()
    response = post_raw(user_client, boot, content)
    assert response.status_code == 201, response.content
    version = Version.objects.get(image=boot, number=response.json()["version"])
    cached = cache_dir(boot.uuid, version.sha256)
    assert (cached / "vmlinuz").read_bytes() == KERNEL
    assert (cached / "initrd.img").read_bytes() == INITRD


def test_a_compressed_boot_partition_is_checked_too(user_client, user, tmp_path):
    boot = ImageFactory(owner=user, type=ImageType.BOOT, compression="gzip")
    content = fat_image(tmp_path / "boot.img", boot_files("boot/")).read_bytes()
    response = post_raw(user_client, boot, gzip.compress(content), HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 201, response.content
    assert "1.img.gz" in files_of(boot)  # stored as it came, compressed


def test_a_version_the_compression_job_rewrote_is_still_read(user_client, user, tmp_path):
    boot = ImageFactory(owner=user, type=ImageType.BOOT, compression="zstd")
    content = ext4_image(tmp_path / "boot.img", boot_files()).read_bytes()
    assert post_raw(user_client, boot, content).status_code == 201
    version = Version.objects.get(image=boot)
    version_compress(version_id=version.pk)
    version.refresh_from_db()
    assert version.stored_compression == "zstd"
    shutil.rmtree(cache_dir(boot.uuid, version.sha256))
    assert boot_files_for(version).kernel.read_bytes() == KERNEL


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"initrd.img": INITRD}, "holds no kernel"),
        (None, "FAT or ext2/3/4 filesystem"),
    ],
)
def test_anything_else_is_400_and_nothing_is_stored(user_client, boot, tmp_path, files, message):
    content = bytes(1 << 20) if files is None else fat_image(tmp_path / "b.img", files).read_bytes()
    response = post_raw(user_client, boot, content)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert "Nothing was stored" in response.json()["detail"]
    assert not Version.objects.filter(image=boot).exists()
    assert files_of(boot) == []


def test_a_boot_image_larger_than_the_limit_is_400(user_client, boot, tmp_path, settings):
    settings.BAAS_BOOT_IMAGE_MAX_SIZE = 1 << 20
    content = fat_image(tmp_path / "boot.img", boot_files()).read_bytes()
    response = post_raw(user_client, boot, content)
    assert response.status_code == 400
    assert "small boot partition: at most 1048576 bytes" in response.json()["detail"]
    assert files_of(boot) == []


def test_other_images_take_any_bytes(user_client, user):
    image = ImageFactory(owner=user, type=ImageType.SINGLE)
    assert post_raw(user_client, image, bytes(1 << 20)).status_code == 201
