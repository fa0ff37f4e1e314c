"""A setup's partition table: declared, shown, edited, images pinned to its partitions by label."""

from __future__ import annotations

import pytest

from catalogue.models import ImageType
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, VersionFactory
from tests.flashing.test_admin import setup_form

pytestmark = pytest.mark.django_db

MIB = 1 << 20
LAYOUT = {
    "disk": "/dev/sda",
    "partitions": [
        {"label": "boot", "size": 8 * MIB, "type": "esp"},
        {"label": "root", "size": 64 * MIB, "type": "linux"},
        {"label": "home", "size": None, "type": "home"},
    ],
}


def setups_url(user):
    return f"/api/user/{user.username}/image_setup"


def create(client, user, **fields):
    return client.post(setups_url(user), {"name": "lab", **fields}, format="json")


def pin(client, setup, version, **fields):
    return client.post(
        f"{setups_url(setup.owner)}/{setup.uuid}/images",
        {"image": str(version.image_id), "version": version.number, **fields},
        format="json",
    )


def patch(client, setup, **fields):
    return client.patch(f"{setups_url(setup.owner)}/{setup.uuid}", fields, format="json")


def version_of(user, image_type=ImageType.SINGLE, size=64 * 1024, disk="/dev/sda"):
    image = ImageFactory(owner=user, type=image_type, target_disk=disk)
    return VersionFactory(image=image, number=0, content=b"\1" * size)


@pytest.fixture
def setup(user):
    return ImageSetupFactory(owner=user, name="lab", layout=LAYOUT)


def test_a_setup_is_created_with_a_partition_table_and_shows_each_partitions_device(
    user_client, user
):
    response = create(user_client, user, layout=LAYOUT)

    assert response.status_code == 201, response.content
    layout = response.json()["layout"]
    assert layout["disk"] == "/dev/sda"
    assert [
        (p["number"], p["label"], p["size"], p["type"], p["device"]) for p in layout["partitions"]
    ] == [
        (1, "boot", 8 * MIB, "esp", "/dev/sda1"),
        (2, "root", 64 * MIB, "linux", "/dev/sda2"),
        (3, "home", None, "home", "/dev/sda3"),
    ]
    shown = user_client.get(response["Location"]).json()["layout"]
    assert shown == layout


def test_a_setup_without_a_table_has_none(user_client, user):
    assert create(user_client, user).json()["layout"] is None


@pytest.mark.parametrize(
    ("partitions", "said"),
    [
        ([{"label": "a", "size": None}, {"label": "b", "size": MIB}], "only the last partition"),
        ([{"label": "a", "size": MIB + 1}], "is 1048577 bytes: a size is a positive whole number"),
        ([{"label": "a", "size": 0}], "is 0 bytes"),
        ([{"label": "a", "size": MIB}, {"label": "a", "size": MIB}], "used twice"),
        ([{"label": "a b", "size": MIB}], "'a b' is not a label"),
        ([{"label": "a", "size": MIB, "type": "fat-please"}], "not a partition type"),
        ([{"label": "a", "size": "1G"}], "a size is a number of bytes"),
        ([{"label": "a", "size": MIB, "colour": "red"}], "unknown fields: colour"),
        ([], "at least one partition"),
    ],
)
def test_a_malformed_table_is_refused_with_the_reason_and_nothing_is_stored(
    user_client, user, partitions, said
):
    response = create(user_client, user, layout={"disk": "/dev/sda", "partitions": partitions})

    assert response.status_code == 400
    assert said in response.json()["detail"], response.json()
    assert not user.image_setups.exists()


def test_a_table_on_something_that_is_not_a_disk_is_refused(user_client, user):
    response = create(user_client, user, layout={"disk": "sda; rm -rf /", "partitions": []})
    assert response.status_code == 400
    assert "is not a disk" in response.json()["detail"]


def test_a_table_names_its_disk_by_the_kernels_name(user_client, user):
    disk = "/dev/disk/by-id/ata-Samsung_SSD_870"
    response = create(user_client, user, layout={**LAYOUT, "disk": disk})
    assert response.status_code == 400
    assert "by its kernel name" in response.json()["detail"]


def test_an_image_is_pinned_to_a_partition_by_label_and_written_to_its_device(
    user_client, user, setup
):
    system = version_of(user, ImageType.SYSTEM)
    home = version_of(user, ImageType.USER_DATA)

    first = pin(user_client, setup, system, partition="root")
    second = pin(user_client, setup, home, partition="home")

    assert first.status_code == 201, first.content
    assert (first.json()["partition"], first.json()["disk"]) == ("root", "/dev/sda2")
    assert (second.json()["partition"], second.json()["disk"]) == ("home", "/dev/sda3")
    assert second.json()["sync"] is True


def test_an_image_larger_than_its_partition_is_refused_with_the_numbers(user_client, user, setup):
    big = version_of(user, size=9 * MIB)

    response = pin(user_client, setup, big, partition="boot")

    assert response.status_code == 400
    assert response.json()["detail"] == (
        f'partition: Version 0 of "{big.image.name}" is 9437184 bytes (9.0 MiB); '
        "partition 'boot' holds 8388608 bytes (8.0 MiB)."
    )
    assert not setup.frozen_images.exists()


def test_the_rest_of_the_disk_takes_any_image_until_a_machine_is_known(user_client, user, setup):
    assert (
        pin(user_client, setup, version_of(user, size=9 * MIB), partition="home").status_code == 201
    )


def test_an_unknown_partition_is_refused_naming_the_ones_there_are(user_client, user, setup):
    response = pin(user_client, setup, version_of(user), partition="data")
    assert response.status_code == 400
    assert "no partition 'data' (it has 'boot', 'root', 'home')" in response.json()["detail"]


def test_a_partition_needs_a_table(user_client, user):
    setup = ImageSetupFactory(owner=user)
    response = pin(user_client, setup, version_of(user), partition="root")
    assert response.status_code == 400
    assert "it has no partition table" in response.json()["detail"]


def test_a_partition_and_a_target_disk_are_not_both_given(user_client, user, setup):
    response = pin(user_client, setup, version_of(user), partition="root", target_disk="/dev/sdb")
    assert response.status_code == 400
    assert "not both" in response.json()["detail"]


def test_nothing_is_written_over_the_whole_disk_that_holds_the_table(user_client, user, setup):
    response = pin(user_client, setup, version_of(user, disk="/dev/sda"))

    assert response.status_code == 409
    assert "over the whole of /dev/sda" in response.json()["detail"]
    other_disk = pin(user_client, setup, version_of(user, disk="/dev/sdb"))
    assert other_disk.status_code == 201  # a second disk is the image's own


def test_two_images_do_not_share_a_partition(user_client, user, setup):
    assert pin(user_client, setup, version_of(user), partition="root").status_code == 201
    response = pin(user_client, setup, version_of(user), partition="root")
    assert response.status_code == 409
    assert "already written to /dev/sda2" in response.json()["detail"]


def test_a_network_mounted_image_goes_on_no_partition(user_client, user, setup):
    boot = ImageFactory(owner=user, type=ImageType.USER_DATA)
    data = VersionFactory(image=boot, number=0)
    response = pin(user_client, setup, data, partition="home", mount="network")
    assert response.status_code == 400
    assert "goes on no partition" in response.json()["detail"]


def test_the_table_is_edited_unless_a_pinned_image_would_lose_its_place(user_client, user, setup):
    version = version_of(user, size=2 * MIB)
    assert pin(user_client, setup, version, partition="root").status_code == 201

    smaller = {"disk": "/dev/sda", "partitions": [{"label": "root", "size": MIB}]}
    response = patch(user_client, setup, layout=smaller)
    assert response.status_code == 409
    assert (
        "is 2097152 bytes (2.0 MiB); partition 'root' holds 1048576 bytes"
        in (response.json()["detail"])
    )
    gone = {"disk": "/dev/sda", "partitions": [{"label": "system", "size": 4 * MIB}]}
    response = patch(user_client, setup, layout=gone)
    assert response.status_code == 409
    assert "no partition 'root'" in response.json()["detail"]
    assert patch(user_client, setup, layout=None).status_code == 409
    setup.refresh_from_db()
    assert setup.layout == LAYOUT  # nothing changed

    bigger = {"disk": "/dev/sda", "partitions": [{"label": "root", "size": 4 * MIB}]}
    response = patch(user_client, setup, layout=bigger)
    assert response.status_code == 200, response.content
    assert response.json()["images"][0]["disk"] == "/dev/sda1"  # root is partition 1 now


def test_a_name_change_keeps_the_table(user_client, user, setup):
    response = patch(user_client, setup, name="renamed")
    assert response.status_code == 200
    assert response.json()["layout"]["disk"] == "/dev/sda"


def test_other_users_cannot_change_the_table(other_client, setup):
    response = patch(other_client, setup, layout=None)
    assert response.status_code == 404
    setup.refresh_from_db()
    assert setup.layout == LAYOUT


def test_the_setup_admin_pins_to_partitions_by_the_same_rules(admin_web, user, setup):
    url = f"/admin/catalogue/imagesetup/{setup.uuid}/change/"
    big = version_of(user, size=9 * MIB)
    row = {"image": big.image.pk, "version": big.pk, "target_disk": "", "partition": "boot"}

    refused = admin_web.post(url, setup_form(setup, [row]))

    assert refused.status_code == 200
    assert "partition &#x27;boot&#x27; holds 8388608 bytes" in refused.content.decode()
    assert not setup.frozen_images.exists()
    row["partition"] = "home"
    assert admin_web.post(url, setup_form(setup, [row])).status_code == 302
    assert setup.frozen_images.get().disk == "/dev/sda3"
    setup.refresh_from_db()
    assert setup.layout == LAYOUT  # the admin shows the table, the API changes it


def test_listing_setups_with_tables_takes_the_same_queries_for_one_or_many(
    user_client, user, django_assert_num_queries
):
    url = f"/api/user/{user.username}/image_setups"
    user_client.get(url)  # the token's first use records it; later ones do not
    for _ in range(5):
        setup = ImageSetupFactory(owner=user, layout=LAYOUT)
        pin(user_client, setup, version_of(user), partition="root")
        pin(user_client, setup, version_of(user, ImageType.USER_DATA), partition="home")
    # token+user, owner, the count, setups, their frozen images with image and version
    with django_assert_num_queries(5):
        response = user_client.get(url)
    assert [i["disk"] for s in response.json()["results"] for i in s["images"]] == [
        "/dev/sda2",
        "/dev/sda3",
    ] * 5
