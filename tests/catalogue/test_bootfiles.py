"""Boot images: the kernel, initrd and command line read from real FAT and ext4 filesystems."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from catalogue.models import ImageType
from catalogue.services.bootfiles import (
    BootImageError,
    boot_files_for,
    cmdline_normalise,
    filesystem_kind,
    version_head,
)
from catalogue.storage import get_storage
from tests.catalogue.factories import ImageFactory, write_version
from tests.catalogue.filesystems import (
    CMDLINE,
    INITRD,
    KERNEL,
    boot_files,
    ext4_image,
    fat_image,
)

pytestmark = pytest.mark.django_db


def boot_version(content: bytes, number: int = 1):
    image = ImageFactory(type=ImageType.BOOT)
    return write_version(image, number, content)


@pytest.mark.parametrize("prefix", ["", "boot/"])
@pytest.mark.parametrize("make", [fat_image, ext4_image], ids=["fat", "ext4"])
def test_the_kernel_initrd_and_cmdline_are_extracted(tmp_path, settings, make, prefix):
    image = make(tmp_path / "boot.img", boot_files(prefix))
    version = boot_version(image.read_bytes())
    files = boot_files_for(version)
    assert files.kernel.read_bytes() == KERNEL
    assert files.initrd.read_bytes() == INITRD
    assert files.cmdline == "console=ttyS0,115200 quiet baas.test=1"
    assert files.directory == settings.BAAS_BOOT_CACHE_DIR / str(version.image_id) / version.sha256
    # Cached: the second call reads nothing from the image.
    get_storage().delete_version(version.image_id, version.number, "none")
    assert boot_files_for(version).kernel.read_bytes() == KERNEL


def test_fat_names_match_whatever_their_case_and_the_initrd_and_cmdline_are_optional(tmp_path):
    image = fat_image(tmp_path / "boot.img", {"BZIMAGE": KERNEL})
    files = boot_files_for(boot_version(image.read_bytes()))
    assert files.kernel.read_bytes() == KERNEL
    assert (files.initrd, files.cmdline) == (None, "")


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_a_compressed_version_is_decompressed_first(tmp_path, compression):
    raw = ext4_image(tmp_path / "boot.img", boot_files()).read_bytes()
    version = boot_version(raw)
    stored = get_storage().version_path(version.image_id, version.number, compression)
    encoded = zstandard.compress(raw) if compression == "zstd" else gzip.compress(raw)
    stored.write_bytes(encoded)
    get_storage().delete_version(version.image_id, version.number, "none")
    version.stored_compression = compression
    version.save()
    assert boot_files_for(version).initrd.read_bytes() == INITRD
    assert filesystem_kind(version_head(version)) == "ext"
    assert not list(stored.parent.glob("*.tmp*"))


def test_an_image_without_a_kernel_is_refused(tmp_path):
    image = fat_image(tmp_path / "boot.img", {"initrd.img": INITRD, "cmdline": CMDLINE})
    with pytest.raises(BootImageError, match="holds no kernel"):
        boot_files_for(boot_version(image.read_bytes()))


def test_an_image_that_is_no_filesystem_is_refused(tmp_path):
    with pytest.raises(BootImageError, match="FAT or ext2/3/4 filesystem"):
        boot_files_for(boot_version(bytes(1 << 20)))


def test_a_directory_named_like_the_kernel_is_not_the_kernel(tmp_path):
    image = ext4_image(tmp_path / "boot.img", {"vmlinuz/x": b"1", "boot/vmlinuz": KERNEL})
    assert boot_files_for(boot_version(image.read_bytes())).kernel.read_bytes() == KERNEL


def test_a_symlink_never_leads_outside_the_image(tmp_path):
    tree = tmp_path / "boot.img.d"
    tree.mkdir()
    (tree / "vmlinuz").symlink_to("/etc/passwd")
    image = ext4_image(tmp_path / "boot.img", {"boot/initrd.img": INITRD})
    with pytest.raises(BootImageError, match="holds no kernel"):
        boot_files_for(boot_version(image.read_bytes()))


def test_files_larger_than_the_limit_are_refused_and_nothing_is_cached(tmp_path, settings):
    image = ext4_image(tmp_path / "boot.img", boot_files())
    settings.BAAS_BOOT_IMAGE_MAX_SIZE = len(KERNEL) - 1
    version = boot_version(image.read_bytes())
    with pytest.raises(BootImageError, match="small boot partition: at most"):
        boot_files_for(version)
    cache = settings.BAAS_BOOT_CACHE_DIR / str(version.image_id)
    assert not cache.exists() or not any(cache.iterdir())


def test_a_sparse_file_in_ext_cannot_make_the_server_write_gigabytes(tmp_path, settings):
    tree = tmp_path / "boot.img.d"
    tree.mkdir()
    with (tree / "vmlinuz").open("wb") as handle:
        handle.truncate(1 << 40)  # a terabyte of holes in a 4 MiB filesystem
    image = ext4_image(tmp_path / "boot.img", {})
    settings.BAAS_BOOT_IMAGE_MAX_SIZE = 8 << 20
    version = boot_version(image.read_bytes())
    with pytest.raises(BootImageError, match="larger than"):
        boot_files_for(version)
    assert not any((settings.BAAS_BOOT_CACHE_DIR / str(version.image_id)).iterdir())


def test_the_command_line_becomes_one_line_without_control_characters():
    assert cmdline_normalise("a=1\r\n\tb=2\x00\x1b[31m\n#!ipxe\n") == "a=1 b=2 [31m #!ipxe"


def test_filesystems_are_recognised_by_their_first_bytes(tmp_path):
    fat = fat_image(tmp_path / "a.img", {}).read_bytes()
    ext = ext4_image(tmp_path / "b.img", {}).read_bytes()
    iso = bytes(0x8001) + b"CD001" + bytes(10)
    assert [filesystem_kind(x[:0x8008]) for x in (fat, ext, iso, bytes(0x8008))] == [
        "fat",
        "ext",
        "iso9660",
        None,
    ]
