"""Dashboard pages for machines and deployments: who sees what, and the forms."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from catalogue.models import ImageType
from flashing.models import Deployment, DeploymentState, DiskContent, Lease, MachineState
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.factories import (
    DeploymentFactory,
    LeaseFactory,
    MachineDiskFactory,
    MachineFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def other_web(client_factory, other_user):
    return client_factory(other_user)


@pytest.fixture
def admin_web(client_factory, administrator):
    return client_factory(administrator)


@pytest.fixture
def client_factory():
    from django.test import Client

    def make(person):
        client = Client()
        client.force_login(person)
        return client

    return make


@pytest.fixture
def machine(db):
    machine = MachineFactory(name="epyc-1")
    MachineDiskFactory(machine=machine, path="/dev/sda", size=64 * 1024**3)
    MachineDiskFactory(machine=machine, path="/dev/sdb", size=128 * 1024**3)
    return machine


def make_setup(owner, name="debian-setup"):
    setup = ImageSetupFactory(owner=owner, name=name)
    image = ImageFactory(owner=owner, name=f"{name}-root", target_disk="/dev/sda")
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=image, number=0))
    return setup


def lease(machine, person):
    machine.state = MachineState.LEASED
    machine.save()
    return LeaseFactory(machine=machine, user=person)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- Reading ------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/machines/", "/machines/52:54:00:00:00:01/", "/deployments/1/"])
def test_the_pages_ask_anonymous_visitors_to_sign_in(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_list_shows_each_machine_its_state_and_its_lease_holder(
    web, machine, other_user, django_assert_max_num_queries
):
    other_user.display_name = "Grace Hopper"
    other_user.save()
    lease(machine, other_user)
    MachineFactory(name="arm-2", architecture="aarch64", state=MachineState.MAINTENANCE)
    with django_assert_max_num_queries(10):
        page = web.get("/machines/").content.decode()
    assert "epyc-1" in page and "arm-2" in page
    assert "Grace Hopper" in page and "Leased" in page and "Maintenance" in page
    assert f'href="/machines/{machine.mac}/"' in page


def test_the_list_costs_the_same_few_queries_for_many_machines(
    web, django_assert_num_queries, user
):
    # Session, user, then machines, MACs, disks, disk contents and active leases.
    for count in (2, 5):
        for _ in range(count):
            lease(MachineFactory(), user)
        with django_assert_num_queries(7):
            web.get("/machines/")


def test_the_list_filters_by_state(web, machine):
    MachineFactory(name="arm-2", state=MachineState.MAINTENANCE)
    page = web.get("/machines/?state=maintenance").content.decode()
    assert "arm-2" in page and "epyc-1" not in page
    assert "epyc-1" in web.get("/machines/?state=bogus").content.decode()


def test_the_detail_shows_the_disks_and_what_is_on_them(web, machine, user):
    image = ImageFactory(owner=user, name="my-kernel")
    version = VersionFactory(image=image, number=3)
    DiskContent.objects.create(
        machine=machine,
        disk="/dev/sdb",
        image=image,
        version=version,
        version_number=3,
        sync=True,
        written_at=timezone.now(),
    )
    page = web.get(f"/machines/{machine.mac}/").content.decode()
    assert "/dev/sda" in page and "64.0\xa0GB" in page
    assert "/dev/sdb" in page and "128.0\xa0GB" in page
    assert "my-kernel v3" in page and "synced back" in page
    assert machine.mac in page


def test_a_machine_is_found_by_any_form_of_its_mac(web, machine):
    dashed = machine.mac.replace(":", "-").upper()
    assert web.get(f"/machines/{dashed}/").status_code == 200


@pytest.mark.parametrize("mac", ["not-a-mac", "52:54:00:ff:ff:ff"])
def test_a_malformed_or_unknown_mac_is_not_found(web, machine, mac):
    assert web.get(f"/machines/{mac}/").status_code == 404


# --- Leases -------------------------------------------------------------------------------


def test_a_user_leases_a_free_machine(web, machine, user, settings):
    settings.BAAS_LEASE_MAX_HOURS = 24
    page = web.get(f"/machines/{machine.mac}/").content.decode()
    assert 'max="24"' in page and ">Lease</button>" in page
    response = web.post(f"/machines/{machine.mac}/lease", {"hours": "4"}, follow=True)
    assert response.redirect_chain[-1][0] == f"/machines/{machine.mac}/"
    held = Lease.objects.get(machine=machine, ended_at=None)
    assert held.user == user
    assert held.ends_at - held.starts_at == timedelta(hours=4)
    assert any(m.startswith("Leased epyc-1 until") for m in messages_of(response))
    machine.refresh_from_db()
    assert machine.state == MachineState.LEASED
    page = response.content.decode()
    assert ">Extend</button>" in page and ">Release</button>" in page


def test_the_holder_extends_the_lease(web, machine, user):
    held = lease(machine, user)
    ends = held.ends_at
    response = web.post(f"/machines/{machine.mac}/lease", {"hours": "2"}, follow=True)
    held.refresh_from_db()
    assert held.ends_at == ends + timedelta(hours=2)
    assert any(m.startswith("Extended your lease of epyc-1") for m in messages_of(response))


def test_an_extension_past_the_maximum_is_refused_with_the_reason(web, machine, user, settings):
    settings.BAAS_LEASE_MAX_HOURS = 10
    held = lease(machine, user)
    ends = held.ends_at
    response = web.post(f"/machines/{machine.mac}/lease", {"hours": "9"}, follow=True)
    held.refresh_from_db()
    assert held.ends_at == ends
    assert any("at most 10 hours" in m for m in messages_of(response))


@pytest.mark.parametrize("hours", ["0", "73", "many", ""])
def test_hours_out_of_bounds_are_refused_by_the_form(web, machine, hours):
    response = web.post(f"/machines/{machine.mac}/lease", {"hours": hours})
    assert response.status_code == 400
    assert 'aria-invalid="true"' in response.content.decode()
    assert not Lease.objects.exists()


def test_nobody_leases_a_machine_someone_else_holds(other_web, machine, user):
    lease(machine, user)
    page = other_web.get(f"/machines/{machine.mac}/").content.decode()
    assert ">Lease</button>" not in page and ">Release</button>" not in page
    response = other_web.post(f"/machines/{machine.mac}/lease", {"hours": "1"}, follow=True)
    assert any("is leased by" in m for m in messages_of(response))
    assert Lease.objects.get(ended_at=None).user == user


def test_a_machine_out_of_service_cannot_be_leased(web, machine):
    machine.state = MachineState.MAINTENANCE
    machine.save()
    response = web.post(f"/machines/{machine.mac}/lease", {"hours": "1"}, follow=True)
    assert any("out of service" in m for m in messages_of(response))
    assert not Lease.objects.exists()


def test_the_holder_releases_the_lease(web, machine, user):
    held = lease(machine, user)
    response = web.post(f"/machines/{machine.mac}/release", follow=True)
    held.refresh_from_db()
    assert (held.end_reason, held.ended_by) == ("released", user)
    assert any(m.startswith("Released epyc-1") for m in messages_of(response))
    machine.refresh_from_db()
    assert machine.state == MachineState.AVAILABLE


def test_another_user_cannot_release_it_but_an_administrator_can(
    other_web, admin_web, machine, user, administrator
):
    held = lease(machine, user)
    assert other_web.post(f"/machines/{machine.mac}/release").status_code == 403
    held.refresh_from_db()
    assert held.ended_at is None
    page = admin_web.get(f"/machines/{machine.mac}/").content.decode()
    assert ">Release</button>" in page
    admin_web.post(f"/machines/{machine.mac}/release")
    held.refresh_from_db()
    assert held.ended_by == administrator


def test_releasing_a_free_machine_says_so(web, machine):
    response = web.post(f"/machines/{machine.mac}/release", follow=True)
    assert "epyc-1 is not leased." in messages_of(response)


def test_the_forms_only_accept_posts(web, machine):
    for action in ("lease", "release", "deploy"):
        assert web.get(f"/machines/{machine.mac}/{action}").status_code == 405


# --- Deploying ------------------------------------------------------------------------------


def test_the_holder_deploys_one_of_their_setups(web, machine, user):
    lease(machine, user)
    setup = make_setup(user)
    response = web.post(
        f"/machines/{machine.mac}/deploy", {"setup": str(setup.uuid), "sync": "on"}, follow=True
    )
    deployment = Deployment.objects.get(machine=machine)
    assert (deployment.setup, deployment.requested_by, deployment.sync) == (setup, user, True)
    assert response.redirect_chain[-1][0] == f"/deployments/{deployment.pk}/"
    page = response.content.decode()
    assert f"Deployment #{deployment.pk} is queued on epyc-1." in page
    assert "Write debian-setup-root v0 to /dev/sda" in page


def test_the_deploy_form_offers_only_the_users_own_setups(web, machine, user, other_user):
    lease(machine, user)
    mine = make_setup(user, "mine")
    theirs = make_setup(other_user, "theirs")
    page = web.get(f"/machines/{machine.mac}/").content.decode()
    assert str(mine.uuid) in page and str(theirs.uuid) not in page
    response = web.post(f"/machines/{machine.mac}/deploy", {"setup": str(theirs.uuid)})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert not Deployment.objects.exists()


def test_only_the_holder_gets_the_deploy_form_and_others_are_refused(
    other_web, machine, user, other_user
):
    lease(machine, user)
    setup = make_setup(other_user)
    page = other_web.get(f"/machines/{machine.mac}/").content.decode()
    assert "Deploy a setup" not in page
    response = other_web.post(
        f"/machines/{machine.mac}/deploy", {"setup": str(setup.uuid)}, follow=True
    )
    assert any("Only the holder of this machine's lease" in m for m in messages_of(response))
    assert not Deployment.objects.exists()


def test_a_setup_that_does_not_fit_is_refused_with_the_reason(web, machine, user):
    lease(machine, user)
    setup = ImageSetupFactory(owner=user, name="wrong-disk")
    image = ImageFactory(owner=user, target_disk="/dev/nvme0n1")
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=image, number=0))
    response = web.post(f"/machines/{machine.mac}/deploy", {"setup": str(setup.uuid)}, follow=True)
    assert any("has no disk /dev/nvme0n1" in m for m in messages_of(response))
    assert not Deployment.objects.exists()


def test_an_administrator_deploys_any_setup_without_a_lease(admin_web, machine, user):
    setup = make_setup(user)
    page = admin_web.get(f"/machines/{machine.mac}/").content.decode()
    assert str(setup.uuid) in page
    admin_web.post(f"/machines/{machine.mac}/deploy", {"setup": str(setup.uuid)})
    assert Deployment.objects.get().setup == setup


# --- The deployment page ----------------------------------------------------------------------


@pytest.fixture
def deployment(machine, user):
    lease(machine, user)
    setup = make_setup(user)
    from flashing.services.deployments import deployment_enqueue

    return deployment_enqueue(actor=user, machine=machine, setup=setup)


def test_the_deployment_page_shows_progress_bars_and_the_event_log(web, deployment):
    item = deployment.images.get()
    item.bytes_done = item.bytes_total // 4
    item.save()
    page = web.get(f"/deployments/{deployment.pk}/").content.decode()
    assert f'data-api="/api/deployment/{deployment.pk}"' in page
    assert f'<progress max="{item.bytes_total}" value="{item.bytes_done}"' in page
    assert 'aria-labelledby="image-label-0"' in page
    assert "16.0\xa0KB of 64.0\xa0KB" in page
    assert "<strong>queued</strong>" in page
    assert 'data-finished="false"' in page
    assert "js/deployment.js" in page and "flashing.css" in page


def test_a_finished_deployment_page_does_not_poll(web, deployment):
    deployment.state = DeploymentState.DONE
    deployment.save()
    page = web.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'data-finished="true"' in page
    assert "Cancel this deployment" not in page


def test_other_users_do_not_see_a_deployment_but_administrators_do(
    other_web, admin_web, deployment
):
    assert other_web.get(f"/deployments/{deployment.pk}/").status_code == 404
    assert admin_web.get(f"/deployments/{deployment.pk}/").status_code == 200
    assert other_web.post(f"/deployments/{deployment.pk}/cancel").status_code == 404


def test_the_requester_cancels_a_queued_deployment(web, deployment):
    response = web.post(f"/deployments/{deployment.pk}/cancel", follow=True)
    deployment.refresh_from_db()
    assert deployment.state == DeploymentState.CANCELLED
    assert f"Deployment #{deployment.pk} is cancelled." in messages_of(response)


def test_a_finished_deployment_cannot_be_cancelled(web, deployment):
    Deployment.objects.filter(pk=deployment.pk).update(state=DeploymentState.DONE)
    response = web.post(f"/deployments/{deployment.pk}/cancel", follow=True)
    assert f"Deployment #{deployment.pk} is done already." in messages_of(response)
    assert 'id="cancel-form"' not in response.content.decode()


def test_the_machine_page_lists_my_deployments_on_it(web, deployment, other_user, machine):
    DeploymentFactory(machine=machine, requested_by=other_user)
    page = web.get(f"/machines/{machine.mac}/").content.decode()
    assert f'href="/deployments/{deployment.pk}/"' in page
    assert page.count('href="/deployments/') == 1


def test_a_system_image_shows_its_name_on_the_disks(web, machine, administrator):
    image = ImageFactory(owner=administrator, name="debian-13", type=ImageType.SYSTEM)
    DiskContent.objects.create(
        machine=machine,
        disk="/dev/sda",
        image=image,
        version_number=0,
        written_at=timezone.now(),
    )
    assert "debian-13 v0" in web.get(f"/machines/{machine.mac}/").content.decode()
