"""What a setup may hold of boot and custom init images: one of each, real filesystems."""

from __future__ import annotations

import pytest

from catalogue.models import ImageFrozen, ImageType
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
    write_version,
)
from tests.catalogue.filesystems import boot_files, ext4_image, fat_image
from tests.catalogue.test_setups_api import pin

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(user):
    return ImageSetupFactory(owner=user, name="experiment")


def boot_image(owner, tmp_path, name="boot", disk="/dev/sda"):
    image = ImageFactory(owner=owner, name=name, type=ImageType.BOOT, target_disk=disk)
    write_version(image, 1, fat_image(tmp_path / f"{name}.img", boot_files()).read_bytes())
    return image


def init_image(owner, tmp_path, name="init", disk="/dev/sdb"):
    image = ImageFactory(owner=owner, name=name, type=ImageType.CUSTOM_INIT, target_disk=disk)
    content = fat_image(tmp_path / f"{name}.img", {"run.d/10-hello": b"#!/bin/sh\necho hi\n"})
    write_version(image, 1, content.read_bytes())
    return image


def test_a_boot_image_and_a_custom_init_image_are_pinned(user_client, setup, user, tmp_path):
    boot, init = boot_image(user, tmp_path), init_image(user, tmp_path)
    assert pin(user_client, setup, boot, 1).status_code == 201
    response = pin(user_client, setup, init, 1)
    assert response.status_code == 201, response.content
    kinds = sorted(setup.frozen_images.values_list("image__type", flat=True))
    assert kinds == [ImageType.BOOT, ImageType.CUSTOM_INIT]


def test_a_second_boot_image_is_400(user_client, setup, user, tmp_path):
    pin(user_client, setup, boot_image(user, tmp_path, "one"), 1)
    response = pin(user_client, setup, boot_image(user, tmp_path, "two", "/dev/sdc"), 1)
    assert response.status_code == 400
    assert 'already has the boot image "one"' in response.json()["detail"]
    assert ImageFrozen.objects.filter(setup=setup).count() == 1


def test_a_second_custom_init_image_is_400(user_client, setup, user, tmp_path):
    pin(user_client, setup, init_image(user, tmp_path, "one"), 1)
    response = pin(user_client, setup, init_image(user, tmp_path, "two", "/dev/sdc"), 1)
    assert response.status_code == 400
    assert 'already has the custom init image "one"' in response.json()["detail"]


def test_a_boot_image_takes_no_disk(user_client, setup, user, tmp_path):
    system = ImageFactory(owner=user, type=ImageType.SINGLE, target_disk="/dev/sda")
    VersionFactory(image=system, number=0)
    assert pin(user_client, setup, system, 0).status_code == 201
    # Its target disk is /dev/sda too, but it is served over the network, not written.
    assert pin(user_client, setup, boot_image(user, tmp_path), 1).status_code == 201


def test_a_boot_image_is_never_synced_back(user_client, setup, user, tmp_path):
    response = pin(user_client, setup, boot_image(user, tmp_path), 1, sync=True)
    assert response.status_code == 400
    assert "nothing to sync back" in response.json()["detail"]


def test_a_boot_image_version_without_a_kernel_is_400(user_client, setup, user, tmp_path):
    image = ImageFactory(owner=user, type=ImageType.BOOT)
    write_version(image, 1, ext4_image(tmp_path / "b.img", {"cmdline": b"quiet"}).read_bytes())
    response = pin(user_client, setup, image, 1)
    assert response.status_code == 400
    assert "cannot be booted: The boot image holds no kernel" in response.json()["detail"]


def test_the_empty_version_0_of_a_boot_image_is_400(user_client, setup, user):
    image = ImageFactory(owner=user, type=ImageType.BOOT)
    VersionFactory(image=image, number=0, content=bytes(1 << 20))
    response = pin(user_client, setup, image, 0)
    assert response.status_code == 400
    assert "FAT or ext2/3/4 filesystem" in response.json()["detail"]


def test_a_custom_init_version_that_is_no_filesystem_is_400(user_client, setup, user):
    image = ImageFactory(owner=user, type=ImageType.CUSTOM_INIT)
    VersionFactory(image=image, number=0, content=bytes(1 << 20))
    response = pin(user_client, setup, image, 0)
    assert response.status_code == 400
    assert "CIDATA (cloud-init) or BAASINIT" in response.json()["detail"]


def test_a_custom_init_image_cannot_share_a_disk(user_client, setup, user, tmp_path):
    system = ImageFactory(owner=user, type=ImageType.SINGLE, target_disk="/dev/sdb")
    VersionFactory(image=system, number=0)
    pin(user_client, setup, system, 0)
    response = pin(user_client, setup, init_image(user, tmp_path), 1)
    assert response.status_code == 409
    # On a partition of the system's disk it is fine: it is written after the system image.
    response = pin(user_client, setup, init_image(user, tmp_path), 1, target_disk="/dev/sdb3")
    assert response.status_code == 201, response.content


def test_a_pinned_image_does_not_become_or_stop_being_a_boot_image(
    user_client, setup, user, tmp_path
):
    boot = boot_image(user, tmp_path)
    pin(user_client, setup, boot, 1)
    response = user_client.patch(f"/api/image/{boot.uuid}", {"type": "single"}, format="json")
    assert response.status_code == 409
    assert '"experiment"' in response.json()["detail"]
    boot.refresh_from_db()
    assert boot.type == ImageType.BOOT


def test_a_deleted_boot_image_leaves_no_extracted_files(
    user_client, user, tmp_path, django_capture_on_commit_callbacks
):
    from catalogue.services.bootfiles import boot_files_for

    boot = boot_image(user, tmp_path)
    cached = boot_files_for(boot.versions.get()).directory
    assert cached.exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert user_client.delete(f"/api/image/{boot.uuid}").status_code == 204
    assert not cached.parent.exists()


def test_the_setup_page_says_where_each_image_goes(client, setup, user, tmp_path):
    from django.urls import reverse

    ImageFrozenFactory(setup=setup, version=boot_image(user, tmp_path).versions.get())
    ImageFrozenFactory(setup=setup, version=init_image(user, tmp_path).versions.get())
    client.force_login(user)
    page = client.get(reverse("setup", kwargs={"setup_id": setup.pk})).content.decode()
    assert "none: booted over the network" in page
    assert '<code>/dev/sdb</code> <span class="muted">(written last)</span>' in page
