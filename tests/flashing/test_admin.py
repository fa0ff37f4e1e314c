"""Django admin for machines, leases, deployments and setups."""

from __future__ import annotations

import pytest

from catalogue.models import ImageSetup, ImageType
from flashing.models import Deployment, Lease, Machine, MachineState
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.factories import LeaseFactory, MachineDiskFactory, MachineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def machine(db):
    machine = MachineFactory(
        name="bmc-node",
        power_driver="ipmi",
        power_settings={"host": "10.0.0.5", "password": "hunter2", "ipmi_key": "k3y"},
    )
    MachineDiskFactory(machine=machine)
    return machine


def inline(prefix, rows, initial=0):
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(rows):
        data.update({f"{prefix}-{i}-{k}": v for k, v in row.items()})
    return data


def test_machine_lists_and_forms_never_show_power_secrets(admin_web, machine):
    listing = admin_web.get("/admin/flashing/machine/").content.decode()
    assert "bmc-node" in listing and "10.0.0.5" in listing
    assert "hunter2" not in listing and "k3y" not in listing
    form = admin_web.get(f"/admin/flashing/machine/{machine.pk}/change/").content.decode()
    assert "hunter2" not in form and "k3y" not in form


def test_saving_the_form_with_masked_secrets_keeps_them(admin_web, machine):
    mac = machine.mac_addresses.get()
    disk = machine.disks.get()
    data = {
        "name": "bmc-node",
        "architecture": "x86_64",
        "managed": "on",
        "power_driver": "ipmi",
        "power_settings": '{"host": "10.0.0.9", "password": "********", "ipmi_key": "********"}',
        "description": "",
        **inline(
            "mac_addresses",
            [{"id": mac.pk, "machine": machine.pk, "address": "AA-BB-CC-00-11-22"}],
            1,
        ),
        **inline(
            "disks",
            [{"id": disk.pk, "machine": machine.pk, "path": disk.path, "size": disk.size}],
            1,
        ),
        **inline("disk_contents", []),
    }
    response = admin_web.post(f"/admin/flashing/machine/{machine.pk}/change/", data)
    assert response.status_code == 302, response.content.decode()[-3000:]
    machine.refresh_from_db()
    assert machine.power_settings == {"host": "10.0.0.9", "password": "hunter2", "ipmi_key": "k3y"}
    assert machine.mac_addresses.get().address == "aa:bb:cc:00:11:22"


def test_an_invalid_mac_is_refused_in_the_admin_too(admin_web, machine):
    mac = machine.mac_addresses.get()
    data = {
        "name": "bmc-node",
        "architecture": "x86_64",
        "power_driver": "manual",
        "power_settings": "{}",
        **inline("mac_addresses", [{"id": mac.pk, "machine": machine.pk, "address": "nope"}], 1),
        **inline("disks", []),
        **inline("disk_contents", []),
    }
    response = admin_web.post(f"/admin/flashing/machine/{machine.pk}/change/", data)
    assert response.status_code == 200
    assert "is not a MAC address" in response.content.decode()


def test_the_lease_action_ends_a_lease_and_frees_the_machine(admin_web, machine, user):
    machine.state = MachineState.LEASED
    machine.save()
    lease = LeaseFactory(machine=machine, user=user)
    response = admin_web.post(
        "/admin/flashing/lease/", {"action": "end_selected", "_selected_action": [lease.pk]}
    )
    assert response.status_code == 302
    lease.refresh_from_db()
    machine.refresh_from_db()
    assert (lease.end_reason, machine.state) == ("released", "available")


def test_the_machine_actions_take_it_out_of_service_and_back(admin_web, machine):
    url = "/admin/flashing/machine/"
    admin_web.post(url, {"action": "take_out_of_service", "_selected_action": [machine.pk]})
    assert Machine.objects.get(pk=machine.pk).state == "maintenance"
    admin_web.post(url, {"action": "put_back_in_service", "_selected_action": [machine.pk]})
    assert Machine.objects.get(pk=machine.pk).state == "available"


def test_the_deployment_action_cancels_queued_ones(admin_web, machine, user):
    deployment = Deployment.objects.create(machine=machine, requested_by=user)
    admin_web.post(
        "/admin/flashing/deployment/",
        {"action": "cancel_selected", "_selected_action": [deployment.pk]},
    )
    assert Deployment.objects.get(pk=deployment.pk).state == "cancelled"


@pytest.mark.parametrize(
    "url",
    [
        "/admin/flashing/machine/?state__exact=available&q=bmc",
        "/admin/flashing/machine/?q=52:54",
        "/admin/flashing/lease/?active=yes&q=bmc",
        "/admin/flashing/deployment/?state__exact=queued&q=bmc",
        "/admin/catalogue/imagesetup/?q=setup",
    ],
)
def test_lists_filter_and_search(admin_web, machine, user, url):
    LeaseFactory(machine=machine, user=user)
    Deployment.objects.create(machine=machine, requested_by=user)
    ImageSetupFactory(owner=user)
    assert admin_web.get(url).status_code == 200


def test_the_change_pages_open(admin_web, machine, user):
    lease = LeaseFactory(machine=machine, user=user)
    deployment = Deployment.objects.create(machine=machine, requested_by=user)
    setup = ImageSetupFactory(owner=user)
    for url in [
        f"/admin/flashing/lease/{lease.pk}/change/",
        f"/admin/flashing/deployment/{deployment.pk}/change/",
        f"/admin/catalogue/imagesetup/{setup.uuid}/change/",
        "/admin/catalogue/imagesetup/add/",
    ]:
        assert admin_web.get(url).status_code == 200, url


def setup_form(setup, rows):
    return {
        "name": setup.name,
        "owner": setup.owner.pk,
        "description": "",
        **inline("frozen_images", rows),
    }


def test_the_setup_admin_applies_the_disk_rule(admin_web, user):
    setup = ImageSetupFactory(owner=user)
    a = VersionFactory(image=ImageFactory(owner=user, target_disk="/dev/sda"), number=0)
    b = VersionFactory(image=ImageFactory(owner=user, target_disk="/dev/sda"), number=0)
    rows = [
        {"image": a.image.pk, "version": a.pk, "target_disk": ""},
        {"image": b.image.pk, "version": b.pk, "target_disk": ""},
    ]
    response = admin_web.post(
        f"/admin/catalogue/imagesetup/{setup.uuid}/change/", setup_form(setup, rows)
    )
    assert response.status_code == 200
    assert "both go to /dev/sda" in response.content.decode()
    assert not setup.frozen_images.exists()


def test_the_setup_admin_applies_the_owner_rules(admin_web, user, other_user):
    setup = ImageSetupFactory(owner=user)
    theirs = VersionFactory(image=ImageFactory(owner=other_user, target_disk="/dev/sdq"), number=0)
    response = admin_web.post(
        f"/admin/catalogue/imagesetup/{setup.uuid}/change/",
        {
            **setup_form(setup, []),
            **inline(
                "frozen_images",
                [{"image": theirs.image.pk, "version": theirs.pk, "target_disk": ""}],
            ),
        },
    )
    assert response.status_code == 200
    assert "may not read it" in response.content.decode()


def test_the_setup_admin_forces_sync_on_user_data(admin_web, user):
    setup = ImageSetupFactory(owner=user)
    data = VersionFactory(image=ImageFactory(owner=user, type=ImageType.USER_DATA), number=0)
    rows = [{"image": data.image.pk, "version": data.pk, "target_disk": "/dev/sdb"}]
    response = admin_web.post(
        f"/admin/catalogue/imagesetup/{setup.uuid}/change/", setup_form(setup, rows)
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    frozen = setup.frozen_images.get()
    assert (frozen.sync, frozen.disk) == (True, "/dev/sdb")
    assert not Lease.objects.exists()


def test_a_new_setup_added_in_the_admin_gets_the_same_rules(admin_web, user, other_user):
    theirs = VersionFactory(image=ImageFactory(owner=other_user), number=0)
    data = {
        "name": "new",
        "owner": user.pk,
        "description": "",
        **inline("frozen_images", [{"image": theirs.image.pk, "version": theirs.pk}]),
    }
    response = admin_web.post("/admin/catalogue/imagesetup/add/", data)
    assert response.status_code == 200
    assert "may not read it" in response.content.decode()
    assert not ImageSetup.objects.filter(name="new").exists()
    own = VersionFactory(image=ImageFactory(owner=user), number=0)
    data.update({"frozen_images-0-image": own.image.pk, "frozen_images-0-version": own.pk})
    assert admin_web.post("/admin/catalogue/imagesetup/add/", data).status_code == 302
    assert ImageSetup.objects.get(name="new").frozen_images.get().version == own


def make_setup(owner, disk="/dev/sda"):
    setup = ImageSetupFactory(owner=owner)
    image = ImageFactory(owner=owner, target_disk=disk)
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=image, number=0))
    return setup


def test_the_requeue_action_queues_a_failed_deployment_again(admin_web, machine, user):
    setup = make_setup(user)
    failed = Deployment.objects.create(
        machine=machine, requested_by=user, setup=setup, sync=True, state="failed"
    )
    response = admin_web.post(
        "/admin/flashing/deployment/",
        {"action": "requeue_selected", "_selected_action": [failed.pk]},
        follow=True,
    )
    assert "Queued 1 deployment(s) again." in response.content.decode()
    again = Deployment.objects.exclude(pk=failed.pk).get()
    assert (again.machine, again.setup, again.sync, again.state) == (machine, setup, True, "queued")
    assert again.images.count() == 1


def test_the_requeue_action_says_why_it_cannot(admin_web, machine, user):
    wrong = make_setup(user, disk="/dev/nvme0n1")
    done = Deployment.objects.create(machine=machine, requested_by=user, setup=wrong, state="done")
    failed = Deployment.objects.create(
        machine=machine, requested_by=user, setup=wrong, state="failed"
    )
    reset = Deployment.objects.create(machine=machine, setup=None, kind="reset", state="failed")
    response = admin_web.post(
        "/admin/flashing/deployment/",
        {"action": "requeue_selected", "_selected_action": [done.pk, failed.pk, reset.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert f"#{failed.pk}: bmc-node has no disk /dev/nvme0n1" in page
    assert f"#{reset.pk} has no setup to queue again." in page
    assert "Queued 0 deployment(s) again." in page
    assert Deployment.objects.count() == 3


def test_the_deployment_list_shows_progress(admin_web, machine, user):
    deployment = Deployment.objects.create(machine=machine, requested_by=user, state="writing")
    image = ImageFactory(owner=user)
    deployment.images.create(
        image=image, version_number=0, disk="/dev/sda", bytes_done=25, bytes_total=100
    )
    page = admin_web.get("/admin/flashing/deployment/").content.decode()
    assert "25 %" in page


def test_the_machine_page_has_mac_disk_and_content_inlines(admin_web, machine):
    page = admin_web.get(f"/admin/flashing/machine/{machine.pk}/change/").content.decode()
    for prefix in ("mac_addresses-0-address", "disks-0-path"):
        assert f'name="{prefix}"' in page
    assert "disk_contents" in page
