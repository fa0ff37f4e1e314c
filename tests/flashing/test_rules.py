"""Machine, lease and deployment rules: the role table, and each rule enforced by its service.

The services are called directly, as a task, the admin or a future CLI would
call them: the rule holds without any view in front of it.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser

from accounts.models import Role
from baas_site.exceptions import Forbidden, NotFound
from flashing import rules
from flashing.exceptions import DeploymentNotFound, InvalidInput, NotYours
from flashing.models import Deployment, DeploymentState, LeaseEndReason, MachineState
from flashing.selectors import deployment_next_seen_by
from flashing.services.deployments import deployment_cancel, deployment_enqueue
from flashing.services.leases import lease_acquire, lease_end
from flashing.services.machines import (
    machine_create,
    machine_delete,
    machine_set_state,
    machine_update,
)
from tests.accounts.factories import UserFactory
from tests.flashing.factories import LeaseFactory, MachineDiskFactory, MachineFactory, mac_for
from tests.flashing.test_deployments import make_setup

pytestmark = pytest.mark.django_db


@pytest.fixture
def leased(user):
    """A machine with a disk, leased by ``user``."""
    machine = MachineFactory(state=MachineState.LEASED)
    MachineDiskFactory(machine=machine, path="/dev/sda", size=2**30)
    return LeaseFactory(machine=machine, user=user)


def queued(user, lease) -> Deployment:
    return deployment_enqueue(actor=user, machine=lease.machine, setup=make_setup(user))


# --- The role table ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "read", "manage", "lease"),
    [
        ("anonymous", False, False, False),
        ("user", True, False, True),
        ("moderator", True, False, True),
        ("administrator", True, True, True),
    ],
)
def test_machine_rights_follow_the_role(db, role, read, manage, lease):
    actor = AnonymousUser() if role == "anonymous" else UserFactory(role=role)
    assert rules.can_read_machines(actor) is read
    assert rules.can_manage_machines(actor) is manage
    assert rules.can_lease_machine(actor) is lease


def test_a_lease_is_its_holders_and_every_administrators(user, other_user, administrator, leased):
    assert rules.can_end_lease(user, leased)
    assert rules.can_end_lease(administrator, leased)
    assert not rules.can_end_lease(other_user, leased)
    assert rules.can_deploy_on(user, leased) and rules.can_deploy_on(administrator, None)
    assert not rules.can_deploy_on(other_user, leased)
    assert not rules.can_deploy_on(user, None)


def test_a_deployment_is_its_requesters_and_every_administrators(
    user, other_user, administrator, leased
):
    deployment = queued(user, leased)
    assert rules.can_cancel_deployment(user, deployment)
    assert rules.can_cancel_deployment(administrator, deployment)
    assert not rules.can_read_deployment(other_user, deployment)
    assert not rules.can_cancel_deployment(other_user, deployment)


# --- Each service checks its rule itself --------------------------------------------------


def test_lease_end_by_someone_else_is_refused_and_the_lease_goes_on(other_user, leased):
    with pytest.raises(NotYours, match="Only the lease holder or an administrator"):
        lease_end(actor=other_user, lease=leased)
    leased.refresh_from_db()
    assert leased.ended_at is None


def test_lease_end_by_its_holder_an_administrator_or_baas_ends_it(user, administrator, db):
    for actor in (user, administrator, None):
        lease = LeaseFactory(machine=MachineFactory(state=MachineState.LEASED), user=user)
        assert lease_end(actor=actor, lease=lease).ended_at is not None
        assert lease.machine.leases.get().end_reason == LeaseEndReason.RELEASED


def test_an_anonymous_visitor_leases_nothing(db):
    machine = MachineFactory()
    with pytest.raises(NotYours):
        lease_acquire(user=AnonymousUser(), machine=machine)
    assert not machine.leases.exists()


def test_deployment_cancel_by_someone_else_answers_as_for_no_deployment(other_user, user, leased):
    deployment = queued(user, leased)
    with pytest.raises(DeploymentNotFound):
        deployment_cancel(actor=other_user, deployment=deployment)
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.QUEUED


def test_deployment_cancel_by_an_administrator_cancels(user, administrator, leased):
    deployment = deployment_cancel(actor=administrator, deployment=queued(user, leased))
    assert deployment.state == DeploymentState.CANCELLED


def test_deployment_enqueue_refuses_a_setup_the_actor_may_not_flash(user, other_user, leased):
    with pytest.raises(InvalidInput) as caught:
        deployment_enqueue(actor=user, machine=leased.machine, setup=make_setup(other_user))
    assert caught.value.detail == {"setup": ["No such setup, or not yours to flash."]}
    assert not Deployment.objects.exists()


def test_deployment_enqueue_refuses_someone_without_the_lease(other_user, leased):
    with pytest.raises(NotYours, match="holder of this machine's lease"):
        deployment_enqueue(actor=other_user, machine=leased.machine, setup=make_setup(other_user))


def test_the_queue_is_seen_by_its_lease_holder_only(user, other_user, leased):
    deployment = queued(user, leased)
    assert deployment_next_seen_by(actor=user, machine=leased.machine) == deployment
    with pytest.raises(Forbidden):
        deployment_next_seen_by(actor=other_user, machine=leased.machine)


@pytest.mark.parametrize("role", [Role.USER, Role.MODERATOR])
def test_only_administrators_register_change_or_remove_machines(db, role):
    person = UserFactory(role=role)
    machine = MachineFactory()
    with pytest.raises(NotYours):
        machine_create(actor=person, name="new", mac_addresses=[mac_for(999)])
    with pytest.raises(NotYours):
        machine_update(actor=person, machine=machine, name="renamed")
    with pytest.raises(NotYours):
        machine_set_state(actor=person, machine=machine, state=MachineState.MAINTENANCE)
    with pytest.raises(NotYours):
        machine_delete(actor=person, machine=machine)
    machine.refresh_from_db()
    assert (machine.name != "renamed", machine.state) == (True, MachineState.AVAILABLE)


def test_an_administrator_registers_a_machine(administrator):
    machine = machine_create(actor=administrator, name="new", mac_addresses=[mac_for(998)])
    assert machine.pk is not None


def test_domain_errors_are_no_http_exceptions():
    """Services raise the domain's kinds; only baas_site.errors knows HTTP."""
    assert issubclass(DeploymentNotFound, NotFound)
    assert not any(c.__module__.startswith("rest_framework") for c in DeploymentNotFound.__mro__)
