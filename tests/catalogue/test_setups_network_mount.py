"""Choosing to mount a user data image over the network: the API, the setup page and the admin."""

from __future__ import annotations

import pytest
from django.urls import reverse

from catalogue.models import ImageType, Mount
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, VersionFactory
from tests.flashing.test_admin import setup_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(user):
    return ImageSetupFactory(owner=user, name="lab")


def version_of(user, image_type):
    image = ImageFactory(owner=user, type=image_type, target_disk="/dev/sdb")
    return VersionFactory(image=image, number=0)


def pin(client, setup, version, **fields):
    return client.post(
        f"/api/user/{setup.owner.username}/image_setup/{setup.uuid}/images",
        {"image": str(version.image_id), "version": version.number, **fields},
        format="json",
    )


def test_a_user_data_image_can_be_network_mounted(user_client, user, setup):
    data = version_of(user, ImageType.USER_DATA)

    response = pin(user_client, setup, data, mount="network")

    assert response.status_code == 201, response.content
    assert (response.json()["mount"], response.json()["sync"]) == ("network", True)
    assert setup.frozen_images.get().mount == Mount.NETWORK


def test_images_are_flashed_unless_said_otherwise(user_client, user, setup):
    response = pin(user_client, setup, version_of(user, ImageType.USER_DATA))

    assert response.status_code == 201
    assert response.json()["mount"] == "flash"


@pytest.mark.parametrize(
    "image_type", [ImageType.SINGLE, ImageType.BOOT, ImageType.TEMPORAL, ImageType.CUSTOM_INIT]
)
def test_only_user_data_images_can_be_network_mounted(user_client, user, setup, image_type):
    response = pin(user_client, setup, version_of(user, image_type), mount="network")

    assert response.status_code == 400
    assert response.json()["detail"] == (
        "mount: Only user data images can be mounted over the network; "
        "this one is flashed onto the disk."
    )
    assert not setup.frozen_images.exists()


def test_an_unknown_mount_is_refused(user_client, user, setup):
    response = pin(user_client, setup, version_of(user, ImageType.USER_DATA), mount="iscsi")

    assert response.status_code == 400
    assert response.json()["detail"].startswith("mount: ")
    assert not setup.frozen_images.exists()


def test_the_setup_page_offers_the_network_mount_and_explains_it(client, user, setup):
    client.force_login(user)
    data = version_of(user, ImageType.USER_DATA)
    url = reverse("setup", kwargs={"setup_id": setup.pk})

    page = client.get(url).content.decode()
    assert "Mounted over the network (NBD)" in page
    assert "boots sooner" in page and "slower than a local disk" in page

    response = client.post(url, {"version": f"{data.image_id}:0", "mount": "network"})
    assert response.status_code == 302
    assert setup.frozen_images.get().mount == Mount.NETWORK
    assert "Network mount" in client.get(url).content.decode()


def test_the_setup_page_refuses_to_network_mount_a_system_image(client, user, setup):
    client.force_login(user)
    single = version_of(user, ImageType.SINGLE)

    response = client.post(
        reverse("setup", kwargs={"setup_id": setup.pk}),
        {"version": f"{single.image_id}:0", "mount": "network"},
    )

    assert response.status_code == 200
    assert "Only user data images can be mounted over the network" in response.content.decode()
    assert not setup.frozen_images.exists()


def test_the_setup_admin_applies_the_rule(admin_web, user):
    setup = ImageSetupFactory(owner=user)
    single = version_of(user, ImageType.SINGLE)
    data = VersionFactory(
        image=ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdc"), number=0
    )
    url = f"/admin/catalogue/imagesetup/{setup.uuid}/change/"
    row = {"image": single.image.pk, "version": single.pk, "target_disk": "", "mount": "network"}

    refused = admin_web.post(url, setup_form(setup, [row]))
    assert refused.status_code == 200
    assert "Only user data images can be mounted over the network" in refused.content.decode()
    assert not setup.frozen_images.exists()

    row = {"image": data.image.pk, "version": data.pk, "target_disk": "", "mount": "network"}
    assert admin_web.post(url, setup_form(setup, [row])).status_code == 302
    assert setup.frozen_images.get().mount == Mount.NETWORK


@pytest.mark.parametrize("order", ["mount first", "flash first"])
def test_a_network_mount_takes_no_disk_so_it_sits_beside_a_flashed_image(
    user_client, user, setup, order
):
    # Both images name /dev/sdb: the mount writes nothing there, so they do not conflict.
    system, data = version_of(user, ImageType.SINGLE), version_of(user, ImageType.USER_DATA)
    steps = [(data, {"mount": "network"}), (system, {})]
    for version, fields in steps if order == "mount first" else steps[::-1]:
        response = pin(user_client, setup, version, **fields)
        assert response.status_code == 201, response.content

    assert sorted(setup.frozen_images.values_list("mount", flat=True)) == ["flash", "network"]


def test_two_flashed_images_on_one_disk_still_conflict(user_client, user, setup):
    assert pin(user_client, setup, version_of(user, ImageType.SINGLE)).status_code == 201

    response = pin(user_client, setup, version_of(user, ImageType.USER_DATA))

    assert response.status_code == 409
    assert "already written to /dev/sdb" in response.json()["detail"]


def test_a_qcow2_user_data_image_is_mounted_over_the_network_not_flashed_and_synced(
    user_client, user, setup
):
    # A flashed disk comes back raw, and a qcow2 image stores only qcow2 files.
    image = ImageFactory(
        owner=user, type=ImageType.USER_DATA, file_standard="qcow2", target_disk="/dev/sdb"
    )
    version = VersionFactory(image=image, number=0)

    refused = pin(user_client, setup, version)

    assert refused.status_code == 400
    assert refused.json()["detail"].startswith(f'sync: "{image.name}" is a qcow2 image')
    assert "mount: network" in refused.json()["detail"]
    assert pin(user_client, setup, version, mount="network").status_code == 201
