"""Every flashing route against every kind of caller.

The machine is leased by ``holder``, who has queued one deployment on it.
"""

from __future__ import annotations

import pytest

from accounts.models import Role
from flashing.models import Deployment, Lease, Machine, MachineState
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.conftest import client_for
from tests.flashing.factories import LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db

WHO = ["anonymous", "holder", "other", "moderator", "administrator"]
OK = (200, 201, 204)

# route -> expected status for anonymous, holder, other, moderator, administrator
MATRIX = {
    "list machines": (401, 200, 200, 200, 200),
    "register machine": (401, 403, 403, 403, 201),
    "read machine": (401, 200, 200, 200, 200),
    "patch machine": (401, 403, 403, 403, 200),
    "put machine": (401, 403, 403, 403, 200),
    "delete machine": (401, 403, 403, 403, 204),
    "lease leased machine": (401, 200, 409, 409, 409),
    "lease free machine": (401, 201, 201, 201, 201),
    "release lease": (401, 204, 403, 403, 204),
    "queue": (401, 201, 403, 403, 201),
    "next in queue": (401, 200, 403, 403, 200),
    "list deployments": (401, 200, 200, 200, 200),
    "read deployment": (401, 200, 404, 404, 200),
    "cancel deployment": (401, 200, 404, 404, 200),
}


def own_setup(owner):
    if owner is None:
        return ImageSetupFactory()
    setup = ImageSetupFactory(owner=owner)
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=ImageFactory(owner=owner)))
    return setup


@pytest.fixture
def world(db):
    holder = UserFactory()
    machine = MachineFactory(state=MachineState.LEASED)
    LeaseFactory(machine=machine, user=holder)
    deployment = Deployment.objects.create(machine=machine, requested_by=holder)
    return {
        "holder": holder,
        "machine": machine,
        "free": MachineFactory(),
        "deployment": deployment,
        "people": {
            "anonymous": None,
            "holder": holder,
            "other": UserFactory(),
            "moderator": UserFactory(role=Role.MODERATOR),
            "administrator": UserFactory(role=Role.ADMINISTRATOR),
        },
    }


def call(route, client, world, person):
    m, d = world["machine"], world["deployment"]
    machine_body = {"name": "x", "mac_addresses": ["02:00:00:00:00:01"]}
    calls = {
        "list machines": ("get", "/api/machines", None),
        "register machine": ("post", "/api/machine", machine_body),
        "read machine": ("get", f"/api/machine/{m.mac}", None),
        "patch machine": ("patch", f"/api/machine/{m.mac}", {"description": "d"}),
        "put machine": ("put", f"/api/machine/{m.mac}", {**machine_body, "mac_addresses": [m.mac]}),
        "delete machine": ("delete", f"/api/machine/{m.mac}", None),
        "lease leased machine": ("post", f"/api/machine/{m.mac}/lease", {"hours": 1}),
        "lease free machine": ("post", f"/api/machine/{world['free'].mac}/lease", {}),
        "release lease": ("delete", f"/api/machine/{m.mac}/lease", None),
        "queue": ("post", f"/api/machine/{m.mac}/boot", {"setup": str(own_setup(person).uuid)}),
        "next in queue": ("get", f"/api/machine/{m.mac}/boot", None),
        "list deployments": ("get", "/api/deployments", None),
        "read deployment": ("get", f"/api/deployment/{d.pk}", None),
        "cancel deployment": ("post", f"/api/deployment/{d.pk}/cancel", None),
    }
    method, url, body = calls[route]
    return getattr(client, method)(url, body, format="json")


def unchanged(world):
    machine = Machine.objects.filter(pk=world["machine"].pk).first()
    assert machine is not None and machine.description == ""
    assert Lease.objects.get(machine=machine).ended_at is None
    assert Deployment.objects.get(pk=world["deployment"].pk).state == "queued"
    assert Deployment.objects.count() == 1
    assert not Machine.objects.filter(name="x").exists()


@pytest.mark.parametrize("route", list(MATRIX))
@pytest.mark.parametrize("who", WHO)
def test_the_permissions_matrix(world, route, who):
    person = world["people"][who]
    response = call(route, client_for(person), world, person)
    expected = MATRIX[route][WHO.index(who)]
    assert response.status_code == expected, response.content
    if expected not in OK:
        assert "detail" in response.json()
        unchanged(world)
