"""Machines through the API: registration, MAC addresses, disks, power settings."""

from __future__ import annotations

import pytest

from accounts.models import AuditEvent
from flashing.models import DiskContent, MacAddress, Machine, MachineState
from tests.catalogue.factories import ImageSetupFactory, VersionFactory
from tests.flashing.factories import LeaseFactory, MachineDiskFactory, MachineFactory

pytestmark = pytest.mark.django_db


def register(client, **overrides):
    payload = {
        "name": "node1",
        "architecture": "aarch64",
        "managed": True,
        "mac_addresses": ["52:54:00:AB:CD:01", "52-54-00-ab-cd-02"],
        "disks": [{"path": "/dev/sda", "size": 500_000_000_000}],
        "power_driver": "ipmi",
        "power_settings": {"host": "10.0.0.5", "username": "admin", "password": "hunter2"},
        **overrides,
    }
    return client.post("/api/machine", payload, format="json")


def test_an_administrator_registers_a_machine_with_normalised_macs(admin_client_api):
    response = register(admin_client_api)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["mac_addresses"] == ["52:54:00:ab:cd:01", "52:54:00:ab:cd:02"]
    assert (body["name"], body["architecture"], body["state"]) == ("node1", "aarch64", "available")
    assert body["disks"] == [{"path": "/dev/sda", "size": 500_000_000_000}]
    machine = Machine.objects.get(name="node1")
    assert set(machine.mac_addresses.values_list("address", flat=True)) == {
        "52:54:00:ab:cd:01",
        "52:54:00:ab:cd:02",
    }
    assert machine.power_settings["password"] == "hunter2"
    assert AuditEvent.objects.filter(action="machine.create", target_id=str(machine.pk)).exists()


def test_power_secrets_are_never_returned(admin_client_api, user_client):
    register(admin_client_api)
    as_admin = admin_client_api.get("/api/machine/52:54:00:ab:cd:01").json()
    assert as_admin["power_settings"] == {
        "host": "10.0.0.5",
        "username": "admin",
        "password": "********",
    }
    assert "hunter2" not in admin_client_api.get("/api/machines").content.decode()
    as_user = user_client.get("/api/machine/52:54:00:ab:cd:01").json()
    assert as_user["power_settings"] is None


def test_a_masked_secret_sent_back_keeps_the_stored_one(admin_client_api):
    register(admin_client_api)
    url = "/api/machine/52:54:00:ab:cd:01"
    settings = admin_client_api.get(url).json()["power_settings"]
    settings["host"] = "10.0.0.6"
    response = admin_client_api.patch(url, {"power_settings": settings}, format="json")
    assert response.status_code == 200
    stored = Machine.objects.get(name="node1").power_settings
    assert stored == {"host": "10.0.0.6", "username": "admin", "password": "hunter2"}
    admin_client_api.patch(url, {"power_settings": {**settings, "password": "new"}}, format="json")
    assert Machine.objects.get(name="node1").power_settings["password"] == "new"


@pytest.mark.parametrize(
    "mac",
    ["52:54:00:ab:cd:0", "52:54:00:ab:cd:zz", "52:54:00:ab:cd:01:02", "", "52:54-00:ab:cd:01"],
)
def test_an_invalid_mac_is_rejected(admin_client_api, mac):
    response = register(admin_client_api, mac_addresses=[mac])
    assert response.status_code == 400
    assert "mac_addresses" in response.json()["errors"]
    assert not Machine.objects.exists()


def test_a_machine_needs_a_mac(admin_client_api):
    assert register(admin_client_api, mac_addresses=[]).status_code == 400


def test_the_same_mac_twice_in_one_request_is_400(admin_client_api):
    response = register(admin_client_api, mac_addresses=["aa:bb:cc:dd:ee:ff", "AABBCCDDEEFF"])
    assert response.status_code == 400


def test_a_mac_belongs_to_one_machine(admin_client_api):
    MachineFactory(name="old", mac="52:54:00:ab:cd:02")
    response = register(admin_client_api)
    assert response.status_code == 409
    assert "old" in response.json()["detail"]
    assert not Machine.objects.filter(name="node1").exists()


def test_names_are_unique(admin_client_api):
    MachineFactory(name="node1")
    assert register(admin_client_api).status_code == 409


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("architecture", "vax"),
        ("power_driver", "magic"),
        ("disks", [{"path": "sda", "size": 1}]),
        ("disks", [{"path": "/dev/sda", "size": 0}]),
        ("disks", [{"path": "/dev/sda", "size": 1}, {"path": "/dev/sda", "size": 2}]),
        ("power_settings", ["not", "an", "object"]),
        ("default_setup", "8d8ac610-566d-4ef0-9c22-186b2a5ed793"),
    ],
)
def test_bad_machine_fields_are_400(admin_client_api, field, value):
    response = register(admin_client_api, **{field: value})
    assert response.status_code == 400
    assert field in response.json()["errors"]


@pytest.mark.parametrize(
    "form", ["52:54:00:ab:cd:01", "52-54-00-AB-CD-01", "5254.00ab.cd01", "525400abcd01"]
)
def test_a_machine_is_found_by_its_mac_in_any_common_form(user_client, form):
    MachineFactory(name="found", mac="52:54:00:ab:cd:01")
    response = user_client.get(f"/api/machine/{form}")
    assert (response.status_code, response.json()["name"]) == (200, "found")


def test_a_malformed_mac_in_the_path_is_400_and_an_unknown_one_404(user_client):
    assert user_client.get("/api/machine/not-a-mac").status_code == 400
    response = user_client.get("/api/machine/52:54:00:00:00:99")
    assert response.status_code == 404
    assert "52:54:00:00:00:99" in response.json()["detail"]


def test_put_replaces_macs_and_disks(admin_client_api):
    machine = MachineFactory(name="n", mac="52:54:00:00:00:01")
    MachineDiskFactory(machine=machine, path="/dev/sda")
    response = admin_client_api.put(
        "/api/machine/52:54:00:00:00:01",
        {
            "name": "renamed",
            "mac_addresses": ["52:54:00:00:00:02"],
            "disks": [{"path": "/dev/nvme0n1", "size": 1000}],
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["mac_addresses"] == ["52:54:00:00:00:02"]
    assert list(machine.disks.values_list("path", flat=True)) == ["/dev/nvme0n1"]
    assert admin_client_api.get("/api/machine/52:54:00:00:00:01").status_code == 404
    assert admin_client_api.get("/api/machine/52:54:00:00:00:02").json()["name"] == "renamed"


def test_patch_changes_only_what_it_names(admin_client_api):
    machine = MachineFactory(name="n", architecture="x86_64")
    MachineDiskFactory(machine=machine)
    response = admin_client_api.patch(
        f"/api/machine/{machine.mac}", {"managed": False}, format="json"
    )
    assert response.status_code == 200
    machine.refresh_from_db()
    assert (machine.managed, machine.architecture, machine.disks.count()) == (False, "x86_64", 1)


def test_an_administrator_chooses_the_default_setup(admin_client_api, administrator):
    machine = MachineFactory()
    setup = ImageSetupFactory(owner=administrator)
    response = admin_client_api.patch(
        f"/api/machine/{machine.mac}", {"default_setup": str(setup.uuid)}, format="json"
    )
    assert response.json()["default_setup"] == str(setup.uuid)
    machine.refresh_from_db()
    assert machine.default_setup == setup


def test_maintenance_takes_a_machine_out_and_available_puts_it_back(admin_client_api, user):
    machine = MachineFactory()
    LeaseFactory(machine=machine, user=user)
    url = f"/api/machine/{machine.mac}"
    assert (
        admin_client_api.patch(url, {"state": "maintenance"}, format="json").json()["state"]
        == "maintenance"
    )
    # back in service, it is leased: the lease never ended
    assert (
        admin_client_api.patch(url, {"state": "available"}, format="json").json()["state"]
        == "leased"
    )


def test_leased_is_not_a_state_to_set_by_hand(admin_client_api):
    machine = MachineFactory()
    response = admin_client_api.patch(
        f"/api/machine/{machine.mac}", {"state": "leased"}, format="json"
    )
    assert response.status_code == 400


def test_a_machine_is_removed(admin_client_api):
    machine = MachineFactory()
    assert admin_client_api.delete(f"/api/machine/{machine.mac}").status_code == 204
    assert not Machine.objects.filter(pk=machine.pk).exists()
    assert not MacAddress.objects.filter(address=machine.mac).exists()


def test_the_list_shows_state_lease_and_disk_contents(user_client, user):
    machine = MachineFactory(name="a")
    LeaseFactory(machine=machine, user=user)
    version = VersionFactory()
    DiskContent.objects.create(
        machine=machine,
        disk="/dev/sda",
        image=version.image,
        version=version,
        version_number=version.number,
        written_at=machine.created_at,
    )
    MachineFactory(name="b", state=MachineState.MAINTENANCE)
    listing = user_client.get("/api/machines").json()["results"]
    assert [m["name"] for m in listing] == ["a", "b"]
    assert listing[0]["lease"]["user"] == user.username
    assert listing[0]["disk_contents"][0]["image"] == str(version.image.uuid)
    assert listing[0]["disk_contents"][0]["version"] == version.number
    assert listing[1]["lease"] is None
    assert [
        m["name"] for m in user_client.get("/api/machines?state=maintenance").json()["results"]
    ] == ["b"]


def test_listing_machines_takes_the_same_queries_for_one_or_many(
    user_client, django_assert_num_queries
):
    user_client.get("/api/machines")  # the token's first use records it
    for n in range(4):
        machine = MachineFactory()
        MachineDiskFactory(machine=machine)
        MacAddress.objects.create(machine=machine, address=f"52:54:01:00:00:{n:02x}")
        LeaseFactory(machine=machine)
        version = VersionFactory()
        DiskContent.objects.create(
            machine=machine,
            disk="/dev/sda",
            image=version.image,
            version=version,
            version_number=version.number,
            written_at=machine.created_at,
        )
    # token+user, the count, machines with default setup, MACs, disks,
    # disk contents+images, leases+users
    with django_assert_num_queries(7):
        response = user_client.get("/api/machines")
    assert len(response.json()) == 4
    assert all(m["lease"] and len(m["mac_addresses"]) == 2 for m in response.json()["results"])
