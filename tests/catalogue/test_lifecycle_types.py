"""What the image types mean: system images are the shared base, user data is always synced."""

from __future__ import annotations

import pytest

from catalogue.models import ImageFrozen, ImageType
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, VersionFactory
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def system_image(administrator):
    image = ImageFactory(owner=administrator, type=ImageType.SYSTEM, name="debian-base")
    VersionFactory(image=image, number=0)
    return image


# --- System images ------------------------------------------------------------------------


def test_every_signed_in_user_sees_system_images_as_the_shared_base(
    user_client, user, system_image
):
    own = ImageFactory(owner=user, name="mine")
    response = user_client.get("/api/images", {"type": "system"})
    assert response.status_code == 200
    listed = [(i["uuid"], i["shared"]) for i in response.json()["results"]]
    assert listed == [(str(system_image.uuid), True)]
    everything = user_client.get("/api/images").json()["results"]
    everything = {i["uuid"]: i["shared"] for i in everything}
    assert everything == {str(system_image.uuid): True, str(own.uuid): False}
    detail = user_client.get(f"/api/image/{system_image.uuid}")
    assert (detail.status_code, detail.json()["shared"]) == (200, True)


def test_nobody_signed_out_reads_a_system_image(anon_client, system_image):
    assert anon_client.get(f"/api/image/{system_image.uuid}").status_code in (401, 403)
    assert anon_client.get("/api/images").status_code in (401, 403)


@pytest.mark.parametrize(("role", "status"), [("user", 403), ("moderator", 201)])
def test_only_moderators_and_administrators_create_system_images(request, role, status):
    who = request.getfixturevalue({"user": "user", "moderator": "moderator"}[role])
    client = client_for(who)
    response = client.post(
        f"/api/user/{who.username}/image", {"name": "base", "type": "system"}, format="json"
    )
    assert response.status_code == status


def test_a_system_image_changes_only_through_assigned_moderators_and_administrators(
    system_image, user, moderator, administrator
):
    from tests.accounts.factories import UserFactory

    assigned = UserFactory(role="moderator")
    system_image.maintainers.add(assigned)
    url = f"/api/image/{system_image.uuid}"
    for who, status in [(user, 403), (moderator, 403), (assigned, 200), (administrator, 200)]:
        response = client_for(who).patch(url, {"description": who.username}, format="json")
        assert response.status_code == status, who.role
    for who, status in [(user, 403), (moderator, 403), (assigned, 201)]:
        upload = client_for(who).generic(
            "POST", url, b"x" * 8192, content_type="application/octet-stream"
        )
        assert upload.status_code == status, who.role
    system_image.refresh_from_db()
    assert system_image.description == administrator.username
    assert list(system_image.versions.values_list("number", flat=True)) == [0, 1]


def test_a_user_cannot_turn_their_image_into_a_system_image(user_client, user):
    image = ImageFactory(owner=user)
    response = user_client.patch(f"/api/image/{image.uuid}", {"type": "system"}, format="json")
    assert response.status_code == 403
    image.refresh_from_db()
    assert image.type == ImageType.SINGLE


# --- User data images ---------------------------------------------------------------------


def test_an_image_that_becomes_user_data_is_synced_back_from_setups_pinning_it(user_client, user):
    image = ImageFactory(owner=user, type=ImageType.SINGLE, target_disk="/dev/sdb")
    VersionFactory(image=image, number=0)
    setups = [ImageSetupFactory(owner=user) for _ in range(2)]
    for setup in setups:
        url = f"/api/user/{user.username}/image_setup/{setup.uuid}/images"
        pinned = user_client.post(url, {"image": str(image.uuid), "version": 0}, format="json")
        assert (pinned.status_code, pinned.json()["sync"]) == (201, False)

    response = user_client.patch(f"/api/image/{image.uuid}", {"type": "user_data"}, format="json")

    assert response.status_code == 200
    assert list(ImageFrozen.objects.filter(image=image).values_list("sync", flat=True)) == [
        True,
        True,
    ]


def test_a_user_data_image_is_pinned_with_sync_even_when_asked_without(user_client, user):
    image = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdc")
    VersionFactory(image=image, number=0)
    setup = ImageSetupFactory(owner=user)
    url = f"/api/user/{user.username}/image_setup/{setup.uuid}/images"
    response = user_client.post(
        url, {"image": str(image.uuid), "version": 0, "sync": False}, format="json"
    )
    assert (response.status_code, response.json()["sync"]) == (201, True)
