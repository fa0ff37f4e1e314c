"""Leases: taking turns on a machine, and what happens when a turn ends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditEvent
from catalogue.models import ImageType
from flashing.models import Deployment, DiskContent, Lease, MachineState
from flashing.tasks import leases_expire_task
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.factories import LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _lease_limits(settings):
    settings.BAAS_LEASE_DEFAULT_HOURS = 4
    settings.BAAS_LEASE_MAX_HOURS = 24


@pytest.fixture
def machine(db):
    return MachineFactory()


def lease(client, machine, **payload):
    return client.post(f"/api/machine/{machine.mac}/lease", payload, format="json")


def hours_of(body):
    from datetime import datetime

    starts = datetime.fromisoformat(body["starts_at"])
    return (datetime.fromisoformat(body["ends_at"]) - starts) / timedelta(hours=1)


def queue(client, machine, setup, sync=False):
    return client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid), "sync": sync}, format="json"
    )


def user_setup(owner):
    setup = ImageSetupFactory(owner=owner)
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=ImageFactory(owner=owner)))
    return setup


def test_a_user_leases_an_available_machine_for_the_default_time(user_client, user, machine):
    response = lease(user_client, machine)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["user"], body["machine"], hours_of(body)) == (user.username, machine.name, 4)
    machine.refresh_from_db()
    assert machine.state == MachineState.LEASED
    assert AuditEvent.objects.filter(action="lease.start").exists()
    assert AuditEvent.objects.filter(action="machine.state", data__new="leased").exists()


def test_a_lease_is_extended_within_the_maximum(user_client, machine):
    assert hours_of(lease(user_client, machine, hours=10).json()) == 10
    response = lease(user_client, machine, hours=14)
    assert (response.status_code, hours_of(response.json())) == (200, 24)
    response = lease(user_client, machine, hours=1)
    assert response.status_code == 400
    assert "24 hours" in response.json()["detail"]
    assert Lease.objects.get().ends_at - Lease.objects.get().starts_at == timedelta(hours=24)


@pytest.mark.parametrize("hours", [0, -1, 25, "many"])
def test_hours_outside_the_limits_are_400(user_client, machine, hours):
    assert lease(user_client, machine, hours=hours).status_code == 400
    assert not Lease.objects.exists()


def test_a_second_user_can_neither_lease_nor_deploy(user_client, other_client, other_user, machine):
    assert lease(user_client, machine).status_code == 201
    response = lease(other_client, machine)
    assert response.status_code == 409
    assert "leased by" in response.json()["detail"]
    response = queue(other_client, machine, user_setup(other_user))
    assert response.status_code == 403
    assert not Deployment.objects.exists()


def test_a_machine_out_of_service_is_not_leased(user_client):
    machine = MachineFactory(state=MachineState.MAINTENANCE)
    assert lease(user_client, machine).status_code == 409


def test_the_holder_releases_the_lease_and_the_machine_is_free(user_client, other_client, machine):
    lease(user_client, machine)
    assert user_client.delete(f"/api/machine/{machine.mac}/lease").status_code == 204
    machine.refresh_from_db()
    assert machine.state == MachineState.AVAILABLE
    ended = Lease.objects.get()
    assert (ended.end_reason, ended.ended_at is not None) == ("released", True)
    assert lease(other_client, machine).status_code == 201


def test_only_the_holder_or_an_administrator_releases(
    user_client, other_client, admin_client_api, machine
):
    lease(user_client, machine)
    assert other_client.delete(f"/api/machine/{machine.mac}/lease").status_code == 403
    assert Lease.objects.get().ended_at is None
    assert admin_client_api.delete(f"/api/machine/{machine.mac}/lease").status_code == 204
    assert Lease.objects.get().ended_by.is_administrator


def test_releasing_a_machine_nobody_holds_is_404(user_client, machine):
    assert user_client.delete(f"/api/machine/{machine.mac}/lease").status_code == 404


def test_ending_a_lease_cancels_its_queue_and_resets_the_machine(
    user_client, user, machine, administrator
):
    default = user_setup(administrator)
    machine.default_setup = default
    machine.save()
    lease(user_client, machine)
    queued = queue(user_client, machine, user_setup(user)).json()
    user_client.delete(f"/api/machine/{machine.mac}/lease")
    assert Deployment.objects.get(pk=queued["id"]).state == "cancelled"
    reset = Deployment.objects.get(kind="reset")
    assert (reset.state, reset.setup, reset.sync, reset.requested_by) == (
        "queued",
        default,
        True,
        None,
    )
    assert [i.image_id for i in reset.images.all()] == [
        f.image_id for f in default.frozen_images.all()
    ]
    assert list(reset.events.values_list("action", flat=True)) == ["queued"]
    cancel_log = Deployment.objects.get(pk=queued["id"]).events.values_list("action", "message")
    assert ("cancelled", f"{user}'s lease ended (released).") in list(cancel_log)


def test_without_a_default_setup_or_data_to_keep_the_machine_is_just_freed(user_client, machine):
    lease(user_client, machine)
    user_client.delete(f"/api/machine/{machine.mac}/lease")
    assert not Deployment.objects.exists()
    machine.refresh_from_db()
    assert machine.state == MachineState.AVAILABLE


def test_user_data_on_the_disks_is_brought_back_even_without_a_default_setup(
    user_client, user, machine
):
    data = VersionFactory(image=ImageFactory(owner=user, type=ImageType.USER_DATA))
    DiskContent.objects.create(
        machine=machine,
        disk="/dev/sdb",
        image=data.image,
        version=data,
        version_number=data.number,
        sync=True,
        written_at=timezone.now(),
    )
    lease(user_client, machine)
    user_client.delete(f"/api/machine/{machine.mac}/lease")
    reset = Deployment.objects.get()
    assert (reset.kind, reset.setup, reset.sync) == ("reset", None, True)


def test_an_unmanaged_machine_is_not_reset(user_client, administrator):
    machine = MachineFactory(managed=False, default_setup=user_setup(administrator))
    lease(user_client, machine)
    user_client.delete(f"/api/machine/{machine.mac}/lease")
    assert not Deployment.objects.exists()


def test_the_scheduled_task_expires_leases_and_frees_their_machines(
    user, machine, administrator, other_client
):
    machine.default_setup = user_setup(administrator)
    machine.save()
    machine.state = MachineState.LEASED
    machine.save()
    past = timezone.now() - timedelta(hours=9)
    LeaseFactory(machine=machine, user=user, starts_at=past, ends_at=past + timedelta(hours=8))
    current = LeaseFactory(user=user)  # on another machine, still running

    assert leases_expire_task() == 1

    machine.refresh_from_db()
    assert machine.state == MachineState.AVAILABLE
    expired = Lease.objects.get(machine=machine)
    assert (expired.end_reason, expired.ended_by) == ("expired", None)
    assert Lease.objects.get(pk=current.pk).ended_at is None
    assert Deployment.objects.filter(machine=machine, kind="reset", state="queued").exists()
    assert lease(other_client, machine).status_code == 201
    assert leases_expire_task() == 0


def test_the_task_is_scheduled_by_beat(settings):
    schedule = {e["task"] for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "flashing.leases_expire" in schedule


def test_a_lease_past_its_end_does_not_block_the_next_user(user, machine, other_client):
    past = timezone.now() - timedelta(hours=5)
    LeaseFactory(machine=machine, user=user, starts_at=past, ends_at=past + timedelta(hours=4))
    assert lease(other_client, machine).status_code == 201
    assert Lease.objects.get(user=user).end_reason == "expired"


def test_a_lease_past_its_end_no_longer_lets_its_holder_deploy(user, user_client, machine):
    past = timezone.now() - timedelta(hours=5)
    LeaseFactory(machine=machine, user=user, starts_at=past, ends_at=past + timedelta(hours=4))
    assert queue(user_client, machine, user_setup(user)).status_code == 403


def test_the_database_allows_one_active_lease_per_machine(machine, user, other_user):
    from django.db import IntegrityError, transaction

    LeaseFactory(machine=machine, user=user)
    with pytest.raises(IntegrityError), transaction.atomic():
        LeaseFactory(machine=machine, user=other_user)
