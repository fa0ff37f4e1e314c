"""Image setups through the API: who may, and what a setup may hold."""

from __future__ import annotations

import uuid

import pytest

from accounts.models import AuditEvent, Role
from catalogue.models import ImageFrozen, ImageSetup, ImageType
from catalogue.selectors.setups import setups_pinning
from flashing.models import Machine
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def setup_url(owner, setup=None, suffix=""):
    if setup is None:
        return f"/api/user/{owner.username}/image_setup"
    return f"/api/user/{owner.username}/image_setup/{setup.uuid}{suffix}"


def images_url(setup):
    return setup_url(setup.owner, setup, "/images")


def pin(client, setup, image, version=0, **extra):
    payload = {"image": str(image.uuid), "version": version, **extra}
    return client.post(images_url(setup), payload, format="json")


@pytest.fixture
def setup(user):
    return ImageSetupFactory(owner=user, name="my setup")


@pytest.fixture
def system_image(administrator):
    image = ImageFactory(owner=administrator, type=ImageType.SYSTEM, target_disk="/dev/sda")
    VersionFactory(image=image, number=0)
    VersionFactory(image=image, number=1)
    return image


@pytest.fixture
def own_image(user):
    image = ImageFactory(owner=user, type=ImageType.SINGLE, target_disk="/dev/sdb")
    VersionFactory(image=image, number=0)
    return image


# --- Creating, reading, changing, deleting setups ----------------------------------


def test_a_user_creates_a_setup_and_gets_its_uuid(user_client, user):
    response = user_client.post(
        setup_url(user), {"name": "kernel dev", "description": "mine"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    setup = ImageSetup.objects.get(uuid=body["uuid"])
    assert (setup.owner, setup.name, body["owner"], body["images"]) == (
        user,
        "kernel dev",
        user.username,
        [],
    )
    assert AuditEvent.objects.filter(action="setup.create", target_id=str(setup.uuid)).exists()


def test_an_administrator_creates_a_setup_for_a_user(admin_client_api, user):
    response = admin_client_api.post(setup_url(user), {"name": "given"}, format="json")
    assert response.status_code == 201
    assert ImageSetup.objects.get(uuid=response.json()["uuid"]).owner == user


@pytest.mark.parametrize("who", ["other_client", "moderator_client"])
def test_nobody_else_creates_setups_for_a_user(request, who, user):
    response = request.getfixturevalue(who).post(setup_url(user), {"name": "x"}, format="json")
    assert response.status_code == 404
    assert not ImageSetup.objects.exists()


def test_a_setup_needs_a_name(user_client, user):
    response = user_client.post(setup_url(user), {"description": "no name"}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()["errors"]


def test_a_malformed_username_is_400_and_an_unknown_one_404(user_client):
    assert user_client.get("/api/user/bad%20name!/image_setups").status_code == 400
    assert user_client.get("/api/user/nobody/image_setups").status_code == 404


def test_the_list_holds_the_users_setups_with_their_images(user_client, user, setup, own_image):
    ImageFrozenFactory(setup=setup, version=own_image.versions.get(number=0))
    ImageSetupFactory(owner=UserFactory(), name="someone else's")
    listing = user_client.get(f"/api/user/{user.username}/image_setups").json()["results"]
    assert [s["name"] for s in listing] == ["my setup"]
    assert listing[0]["images"][0]["image"] == str(own_image.uuid)
    assert listing[0]["images"][0]["disk"] == "/dev/sdb"


def test_listing_setups_takes_the_same_queries_for_one_or_many(
    user_client, user, own_image, system_image, django_assert_num_queries
):
    url = f"/api/user/{user.username}/image_setups"
    user_client.get(url)  # the token's first use records it; later ones do not
    for n in range(5):
        setup = ImageSetupFactory(owner=user)
        ImageFrozenFactory(setup=setup, version=own_image.versions.get(number=0))
        ImageFrozenFactory(setup=setup, version=system_image.versions.get(number=n % 2))
    # token+user, owner, the count, setups, their frozen images with image and version
    with django_assert_num_queries(5):
        response = user_client.get(url)
    assert len(response.json()["results"]) == 5
    assert all(len(s["images"]) == 2 for s in response.json()["results"])


def test_a_setup_is_renamed_with_patch_and_replaced_with_put(user_client, setup):
    response = user_client.patch(setup_url(setup.owner, setup), {"name": "renamed"}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "renamed"
    response = user_client.put(setup_url(setup.owner, setup), {"name": "put"}, format="json")
    assert (response.status_code, response.json()["description"]) == (200, "")
    setup.refresh_from_db()
    assert setup.name == "put"


def test_put_without_a_name_is_400(user_client, setup):
    response = user_client.put(setup_url(setup.owner, setup), {"description": "x"}, format="json")
    assert response.status_code == 400


def test_a_setup_is_deleted(user_client, setup):
    assert user_client.delete(setup_url(setup.owner, setup)).status_code == 204
    assert not ImageSetup.objects.filter(pk=setup.pk).exists()


def test_a_machines_default_setup_is_not_deleted(user_client, setup):
    Machine.objects.create(name="node1", default_setup=setup)
    response = user_client.delete(setup_url(setup.owner, setup))
    assert response.status_code == 409
    assert "node1" in response.json()["detail"]
    assert ImageSetup.objects.filter(pk=setup.pk).exists()


def test_a_setup_under_another_users_name_is_404(user_client, user, other_user):
    theirs = ImageSetupFactory(owner=other_user)
    assert (
        user_client.get(f"/api/user/{user.username}/image_setup/{theirs.uuid}").status_code == 404
    )


# --- The permissions matrix -------------------------------------------------------------

ROUTES = [
    ("post", "create", {"name": "n"}),
    ("get", "list", None),
    ("get", "detail", None),
    ("patch", "detail", {"name": "renamed"}),
    ("put", "detail", {"name": "renamed"}),
    ("get", "images", None),
    ("post", "images", "pin"),
    ("delete", "images", "unpin"),
    ("delete", "detail", None),
]
# who -> allowed on (create, everything else)
WHO = {
    "anonymous": (401, 401),
    "owner": (True, True),
    "other": (404, 404),
    "moderator": (404, True),
    "administrator": (True, True),
}


@pytest.mark.parametrize(("method", "route", "payload"), ROUTES)
@pytest.mark.parametrize("who", list(WHO))
def test_the_permissions_matrix(who, method, route, payload, user, system_image, administrator):
    setup = ImageSetupFactory(owner=user)
    pinned = ImageFactory(owner=user, target_disk="/dev/sdc")
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=pinned, number=0))
    people = {
        "anonymous": None,
        "owner": user,
        "other": UserFactory(),
        "moderator": UserFactory(role=Role.MODERATOR),
        "administrator": administrator,
    }
    client = client_for(people[who])
    url = {
        "create": setup_url(user),
        "list": f"/api/user/{user.username}/image_setups",
        "detail": setup_url(user, setup),
        "images": images_url(setup),
    }[route]
    if payload == "pin":
        payload = {"image": str(system_image.uuid), "version": 1}
    elif payload == "unpin":
        payload = {"image": str(pinned.uuid)}
    response = getattr(client, method)(url, payload, format="json")
    expected = WHO[who][0 if route == "create" else 1]
    if expected is True:
        assert response.status_code in (200, 201, 204), response.content
    else:
        assert response.status_code == expected
        assert "detail" in response.json()
        assert ImageSetup.objects.filter(pk=setup.pk, name=setup.name).exists()
        assert setup.frozen_images.count() == 1


# --- What a setup may hold ----------------------------------------------------------------


def test_a_system_image_is_pinned_at_a_version(user_client, setup, system_image):
    response = pin(user_client, setup, system_image, version=1)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["image"], body["version"], body["sync"], body["disk"]) == (
        str(system_image.uuid),
        1,
        False,
        "/dev/sda",
    )
    frozen = ImageFrozen.objects.get(setup=setup)
    assert (frozen.version.number, frozen.sync) == (1, False)
    listing = user_client.get(images_url(setup)).json()
    assert [(f["image_name"], f["version"]) for f in listing] == [(system_image.name, 1)]


def test_another_users_private_image_cannot_be_pinned(user_client, setup, other_user):
    theirs = ImageFactory(owner=other_user)
    VersionFactory(image=theirs, number=0)
    response = pin(user_client, setup, theirs)
    assert response.status_code == 400
    assert "image" in response.json()["errors"]
    assert not setup.frozen_images.exists()


def test_an_unknown_image_answers_like_an_unreadable_one(user_client, setup, other_user):
    theirs = ImageFactory(owner=other_user)
    VersionFactory(image=theirs, number=0)
    unknown = user_client.post(
        images_url(setup), {"image": str(uuid.uuid4()), "version": 0}, format="json"
    )
    unreadable = pin(user_client, setup, theirs)
    assert unknown.status_code == unreadable.status_code == 400
    assert unknown.json()["detail"] == unreadable.json()["detail"]


def test_what_may_be_pinned_depends_on_the_owner_not_on_the_editor(
    admin_client_api, administrator, setup
):
    admins_own = ImageFactory(owner=administrator)
    VersionFactory(image=admins_own, number=0)
    response = pin(admin_client_api, setup, admins_own)
    assert response.status_code == 400
    assert not setup.frozen_images.exists()


def test_a_moderator_pins_a_system_image_into_a_users_setup(moderator_client, setup, system_image):
    assert pin(moderator_client, setup, system_image, version=0).status_code == 201


def test_a_version_that_does_not_exist_cannot_be_pinned(user_client, setup, system_image):
    response = pin(user_client, setup, system_image, version=7)
    assert response.status_code == 400
    assert "version" in response.json()["errors"]


def test_a_negative_version_is_400(user_client, setup, system_image):
    assert pin(user_client, setup, system_image, version=-1).status_code == 400


def test_images_the_owner_cannot_write_are_not_synced_back(user_client, setup, system_image):
    response = pin(user_client, setup, system_image, sync=True)
    assert response.status_code == 400
    assert "sync" in response.json()["errors"]
    assert not setup.frozen_images.exists()


def test_the_owners_own_image_may_be_synced_back(user_client, setup, own_image):
    response = pin(user_client, setup, own_image, sync=True)
    assert (response.status_code, response.json()["sync"]) == (201, True)


def test_user_data_images_are_always_synced_back(user_client, setup, user):
    data = ImageFactory(owner=user, type=ImageType.USER_DATA, target_disk="/dev/sdd")
    VersionFactory(image=data, number=0)
    response = pin(user_client, setup, data, sync=False)
    assert (response.status_code, response.json()["sync"]) == (201, True)
    assert ImageFrozen.objects.get(setup=setup, image=data).sync is True


def test_a_user_data_image_the_owner_may_only_read_cannot_be_pinned(administrator):
    moderator = UserFactory(role=Role.MODERATOR)
    data = ImageFactory(owner=administrator, type=ImageType.USER_DATA)
    data.maintainers.add(moderator)  # may read it, may not write it
    VersionFactory(image=data, number=0)
    setup = ImageSetupFactory(owner=moderator)
    response = pin(client_for(moderator), setup, data)
    assert response.status_code == 400
    assert "always synced back" in response.json()["detail"]


def test_two_images_cannot_share_a_disk(user_client, setup, system_image, user):
    assert pin(user_client, setup, system_image).status_code == 201
    same_disk = ImageFactory(owner=user, target_disk="/dev/sda")
    VersionFactory(image=same_disk, number=0)
    response = pin(user_client, setup, same_disk)
    assert response.status_code == 409
    assert system_image.name in response.json()["detail"]
    assert "/dev/sda" in response.json()["detail"]
    response = pin(user_client, setup, same_disk, target_disk="/dev/sdb")
    assert (response.status_code, response.json()["disk"]) == (201, "/dev/sdb")


def test_an_override_cannot_land_on_a_taken_disk(user_client, setup, system_image, own_image):
    assert pin(user_client, setup, own_image).status_code == 201  # /dev/sdb
    assert pin(user_client, setup, system_image, target_disk="/dev/sdb").status_code == 409


def test_an_image_is_pinned_once_per_setup(user_client, setup, system_image):
    assert pin(user_client, setup, system_image, version=0).status_code == 201
    response = pin(user_client, setup, system_image, version=1, target_disk="/dev/sdz")
    assert response.status_code == 409
    assert setup.frozen_images.count() == 1


@pytest.mark.parametrize("disk", ["sda", "/dev/../etc/passwd", "/etc/passwd", "/dev/sd a"])
def test_a_target_disk_that_is_not_a_device_is_400(user_client, setup, system_image, disk):
    response = pin(user_client, setup, system_image, target_disk=disk)
    assert response.status_code == 400
    assert "target_disk" in response.json()["errors"]


def test_a_pinned_image_is_removed_by_body_or_query(user_client, setup, system_image, own_image):
    pin(user_client, setup, system_image)
    pin(user_client, setup, own_image)
    url = images_url(setup)
    assert (
        user_client.delete(url, {"image": str(system_image.uuid)}, format="json").status_code == 204
    )
    assert user_client.delete(f"{url}?image={own_image.uuid}").status_code == 204
    assert user_client.get(url).json() == []
    assert user_client.delete(f"{url}?image={own_image.uuid}").status_code == 404


def test_removing_without_saying_which_image_is_400(user_client, setup):
    assert user_client.delete(images_url(setup)).status_code == 400


# --- The hook for image and version deletion ------------------------------------------------


def test_setups_pinning_names_the_setups_that_pin_a_version_or_its_image(system_image, user):
    v0, v1 = system_image.versions.order_by("number")
    a = ImageSetupFactory(owner=user, name="a")
    ImageFrozenFactory(setup=a, version=v1)
    ImageSetupFactory(owner=user, name="b")
    assert list(setups_pinning(version=v1)) == [a]
    assert list(setups_pinning(version=v0)) == []
    assert list(setups_pinning(image=system_image)) == [a]
    with pytest.raises(TypeError):
        setups_pinning()


def test_a_setup_waiting_in_a_machines_queue_is_not_deleted(user_client, setup):
    from flashing.models import Deployment
    from tests.flashing.factories import MachineFactory

    deployment = Deployment.objects.create(machine=MachineFactory(), setup=setup)
    response = user_client.delete(setup_url(setup.owner, setup))
    assert response.status_code == 409
    assert f"#{deployment.pk}" in response.json()["detail"]
    deployment.state = "done"
    deployment.save()
    assert user_client.delete(setup_url(setup.owner, setup)).status_code == 204
