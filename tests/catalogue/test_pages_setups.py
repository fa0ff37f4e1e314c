"""The setup pages of the dashboard, through Django's test client."""

from __future__ import annotations

import pytest
from django.urls import reverse

from catalogue.models import ImageFrozen, ImageSetup, ImageType
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.factories import DeploymentFactory, MachineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(user):
    return ImageSetupFactory(owner=user, name="lab")


@pytest.fixture
def image(user):
    image = ImageFactory(owner=user, name="os", target_disk="/dev/sda")
    for number in (0, 1):
        VersionFactory(image=image, number=number)
    return image


def _url(name: str, setup: ImageSetup | None = None, **kwargs) -> str:
    if setup is not None:
        kwargs["setup_id"] = setup.pk
    return reverse(name, kwargs=kwargs or None)


def _pin(signed_in, setup, image, number, **fields):
    return signed_in.post(_url("setup", setup), {"version": f"{image.pk}:{number}", **fields})


@pytest.mark.parametrize("name", ["setup", "setup-edit", "setup-delete"])
def test_anonymous_visitors_are_sent_to_sign_in(client, setup, name):
    assert client.get(_url("setups")).status_code == 302
    response = client.get(_url(name, setup))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", ["setup", "setup-edit", "setup-delete"])
def test_another_users_setup_is_not_found(signed_in, other_user, name):
    foreign = ImageSetupFactory(owner=other_user)
    assert signed_in.get(_url(name, foreign)).status_code == 404
    assert signed_in.post(_url(name, foreign), {"name": "mine now"}).status_code == 404
    foreign.refresh_from_db()
    assert foreign.name != "mine now"


def test_the_list_shows_only_my_setups(signed_in, user, other_user, image):
    ImageFrozenFactory(setup__owner=user, setup__name="mine", version=image.versions.get(number=1))
    ImageSetupFactory(owner=other_user, name="theirs")
    response = signed_in.get(_url("setups"))
    assert [s.name for s in response.context["setups"]] == ["mine"]
    assert b"os v1" in response.content
    assert b"theirs" not in response.content


def test_a_user_creates_a_setup_and_lands_on_it(signed_in, user):
    response = signed_in.post(_url("setup-new"), {"name": "kernel-dev", "description": "x"})
    setup = ImageSetup.objects.get(name="kernel-dev")
    assert setup.owner == user
    assert response["Location"] == _url("setup", setup)


def test_a_setup_needs_a_name(signed_in):
    response = signed_in.post(_url("setup-new"), {"name": ""})
    assert response.status_code == 200
    assert "name" in response.context["form"].errors
    assert not ImageSetup.objects.exists()


def test_the_picker_offers_every_version_of_the_images_the_owner_may_read(
    signed_in, setup, image, other_user
):
    system = ImageFactory(owner=other_user, type=ImageType.SYSTEM, name="shared")
    VersionFactory(image=system, number=0)
    VersionFactory(image=ImageFactory(owner=other_user, name="private"), number=0)
    form = signed_in.get(_url("setup", setup)).context["form"]
    values = [value for _, group in form.fields["version"].choices[1:] for value, _ in group]
    assert values == [f"{image.pk}:1", f"{image.pk}:0", f"{system.pk}:0"]  # by name, newest first


def test_a_user_pins_a_version_with_sync_and_a_disk(signed_in, setup, image):
    response = _pin(signed_in, setup, image, 0, sync="on", target_disk="/dev/sdb")
    assert response.status_code == 302
    frozen = ImageFrozen.objects.get(setup=setup)
    assert (frozen.image, frozen.version.number, frozen.sync, frozen.disk) == (
        image,
        0,
        True,
        "/dev/sdb",
    )
    page = signed_in.get(_url("setup", setup)).content.decode()
    assert "/dev/sdb" in page
    assert "(override)" in page


def test_two_images_on_one_disk_are_refused_with_the_services_message(
    signed_in, user, setup, image
):
    other = ImageFactory(owner=user, name="other", target_disk="/dev/sda")
    VersionFactory(image=other, number=0)
    _pin(signed_in, setup, image, 1)
    response = _pin(signed_in, setup, other, 0)
    assert response.status_code == 200
    assert "already written to /dev/sda" in str(response.context["form"].errors)
    assert ImageFrozen.objects.filter(setup=setup).count() == 1


def test_sync_is_refused_on_an_image_the_owner_may_not_write(signed_in, setup, other_user):
    system = ImageFactory(owner=other_user, type=ImageType.SYSTEM)
    VersionFactory(image=system, number=0)
    response = _pin(signed_in, setup, system, 0, sync="on")
    assert "can be synced back" in response.context["form"].errors["sync"][0]
    assert not ImageFrozen.objects.exists()


def test_a_bad_target_disk_and_a_missing_version_are_form_errors(signed_in, setup, image):
    response = _pin(signed_in, setup, image, 7, target_disk="sdb")
    errors = response.context["form"].errors
    assert "is not a disk" in errors["target_disk"][0]
    assert "Select a valid choice" in errors["version"][0]


def test_a_pinned_image_is_removed(signed_in, setup, image):
    _pin(signed_in, setup, image, 1)
    url = _url("setup-image-remove", setup, image_id=image.pk)
    assert signed_in.get(url).status_code == 405
    assert signed_in.post(url).status_code == 302
    assert not ImageFrozen.objects.filter(setup=setup).exists()


def test_a_setup_is_renamed(signed_in, setup):
    assert signed_in.get(_url("setup-edit", setup)).context["form"].initial["name"] == "lab"
    response = signed_in.post(_url("setup-edit", setup), {"name": "lab-2", "description": "d"})
    assert response.status_code == 302
    setup.refresh_from_db()
    assert (setup.name, setup.description) == ("lab-2", "d")


def test_a_setup_is_deleted_after_confirmation(signed_in, setup):
    assert b"Delete lab?" in signed_in.get(_url("setup-delete", setup)).content
    assert signed_in.post(_url("setup-delete", setup))["Location"] == _url("setups")
    assert not ImageSetup.objects.filter(pk=setup.pk).exists()


def test_a_setup_waiting_in_a_queue_is_not_deleted_and_the_page_says_why(signed_in, user, setup):
    deployment = DeploymentFactory(setup=setup, requested_by=user, machine=MachineFactory())
    response = signed_in.post(_url("setup-delete", setup))
    assert response.status_code == 409
    assert f"#{deployment.pk}" in response.context["error"]
    assert ImageSetup.objects.filter(pk=setup.pk).exists()
