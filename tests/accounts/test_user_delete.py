"""Deleting a user who owns images or setups, or holds a lease: refused with a list, or
handed over to an administrator; never a 500."""

from __future__ import annotations

import pytest

from accounts.models import AuditEvent, User
from catalogue.models import Image, ImageSetup
from flashing.models import Deployment, Lease, MachineState
from tests.accounts.conftest import client_with_scopes
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.factories import MachineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def belongings(user):
    image = ImageFactory(owner=user, name="my-kernel")
    setup = ImageSetupFactory(owner=user, name="my-setup")
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=image))
    return image, setup


def lease_machine(client, machine):
    response = client.post(f"/api/machine/{machine.mac}/lease", {}, format="json")
    assert response.status_code == 201
    return Lease.objects.get(machine=machine, ended_at=None)


def test_a_user_who_owns_images_and_setups_is_refused_with_a_list(
    admin_client_api, user, belongings
):
    image, setup = belongings
    response = admin_client_api.delete(f"/api/user/{user.username}")
    assert response.status_code == 409
    body = response.json()
    assert body["owns"] == [f"image my-kernel ({image.uuid})", f"setup my-setup ({setup.uuid})"]
    assert "transfer_to" in body["detail"]
    assert User.objects.filter(pk=user.pk).exists()


def test_everything_is_handed_over_to_an_administrator(
    admin_client_api, administrator, user, belongings
):
    image, setup = belongings
    url = f"/api/user/{user.username}?transfer_to={administrator.username}"
    assert admin_client_api.delete(url).status_code == 204
    assert not User.objects.filter(pk=user.pk).exists()
    assert Image.objects.get(pk=image.pk).owner == administrator
    assert ImageSetup.objects.get(pk=setup.pk).owner == administrator
    assert AuditEvent.objects.filter(action="image.hand_over", target_id=str(image.pk)).exists()


def test_a_held_lease_is_refused_then_ended_properly_on_hand_over(
    admin_client_api, administrator, user
):
    machine = MachineFactory()
    owner_client = client_with_scopes(user)
    lease = lease_machine(owner_client, machine)
    setup = ImageSetupFactory(owner=user)
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=ImageFactory(owner=user)))
    queued = owner_client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
    )
    assert queued.status_code in (201, 202)
    refused = admin_client_api.delete(f"/api/user/{user.username}")
    assert refused.status_code == 409
    owns = refused.json()["owns"]
    assert any(line.startswith(f"lease on {machine.name} until") for line in owns)
    assert any(line.startswith("deployment #") for line in owns)
    url = f"/api/user/{user.username}?transfer_to={administrator.username}"
    assert admin_client_api.delete(url).status_code == 204
    machine.refresh_from_db()
    assert machine.state != MachineState.LEASED
    assert not Lease.objects.filter(pk=lease.pk, ended_at=None).exists()
    assert Deployment.objects.get(pk=queued.json()["id"]).state == "cancelled"
    assert AuditEvent.objects.filter(action="lease.released").exists()


def test_handing_over_needs_an_administrator_to_receive(admin_client_api, user, other_user):
    ImageFactory(owner=user)
    url = f"/api/user/{user.username}?transfer_to={other_user.username}"
    response = admin_client_api.delete(url)
    assert response.status_code == 400
    assert "not an active administrator" in response.json()["detail"]
    assert User.objects.filter(pk=user.pk).exists()


def test_a_user_cannot_hand_their_things_to_an_administrator(user_client, user, administrator):
    ImageFactory(owner=user)
    url = f"/api/user/{user.username}?transfer_to={administrator.username}"
    assert user_client.delete(url).status_code == 403
    assert User.objects.filter(pk=user.pk).exists()


def test_a_user_who_owns_nothing_deletes_themselves(user_client, user):
    assert user_client.delete(f"/api/user/{user.username}").status_code == 204
    assert not User.objects.filter(pk=user.pk).exists()


def test_the_admin_delete_page_refuses_in_plain_words(admin_web, user, belongings):
    url = f"/admin/accounts/user/{user.pk}/delete/"
    page = admin_web.get(url)
    assert page.status_code == 200
    assert b"owns or holds image my-kernel" in page.content
    posted = admin_web.post(url, {"post": "yes"})
    assert posted.status_code == 200
    assert User.objects.filter(pk=user.pk).exists()


def test_the_admin_bulk_delete_refuses_too(admin_web, user, other_user, belongings):
    response = admin_web.post(
        "/admin/accounts/user/",
        {"action": "delete_selected", "_selected_action": [user.pk, other_user.pk], "post": "yes"},
    )
    assert response.status_code == 200
    assert b"owns or holds setup my-setup" in response.content
    assert User.objects.filter(pk__in=[user.pk, other_user.pk]).count() == 2


def test_the_admin_deletes_a_user_who_owns_nothing(admin_web, user):
    url = f"/admin/accounts/user/{user.pk}/delete/"
    assert admin_web.post(url, {"post": "yes"}).status_code == 302
    assert not User.objects.filter(pk=user.pk).exists()


def test_the_admin_refuses_a_user_holding_a_lease(admin_web, user):
    from tests.flashing.factories import LeaseFactory

    lease = LeaseFactory(user=user)
    page = admin_web.post(f"/admin/accounts/user/{user.pk}/delete/", {"post": "yes"})
    assert page.status_code == 200
    assert f"owns or holds lease on {lease.machine.name}".encode() in page.content
    assert Lease.objects.filter(pk=lease.pk, ended_at=None).exists()
