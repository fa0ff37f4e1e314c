"""Machines and deployments in a real browser: lease, deploy, watch a real agent flash."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from accounts.models import Role
from catalogue.models import ImageType
from flashing.models import Deployment, Lease
from tests.accounts.factories import PASSWORD, UserFactory
from tests.browser.conftest import sign_in
from tests.flashing.e2e import MiB, image_bytes, make_rig, sha256_of
from tests.flashing.factories import LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def researcher(db):
    return UserFactory(role=Role.USER, display_name="Ada Lovelace")


@pytest.fixture
def rig(celery_worker, live_server, tmp_path, researcher):
    """The flashing rig (tests/flashing/e2e.py) with the researcher owning images and setups."""
    yield from make_rig(live_server, tmp_path, researcher)


def test_the_machines_list_shows_states_and_lease_holders(page, screenshot, researcher):
    holder = UserFactory(role=Role.USER, display_name="Grace Hopper")
    busy = MachineFactory(name="epyc-busy", state="leased")
    LeaseFactory(machine=busy, user=holder)
    MachineFactory(name="arm-free", architecture="aarch64")
    MachineFactory(name="riscv-down", architecture="riscv64", state="maintenance")
    sign_in(page, researcher.username, PASSWORD)
    page.get_by_role("link", name="Machines", exact=True).click()
    page.wait_for_url("**/machines/")
    rows = page.get_by_role("row")
    expect(rows.filter(has_text="epyc-busy")).to_contain_text("Grace Hopper")
    expect(rows.filter(has_text="arm-free")).to_contain_text("free")
    expect(rows.filter(has_text="riscv-down")).to_contain_text("Maintenance")
    page.get_by_label("State").select_option("maintenance")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("link", name="riscv-down")).to_be_visible()
    expect(page.get_by_role("link", name="arm-free")).to_have_count(0)


@pytest.mark.worker
def test_a_researcher_leases_a_machine_and_watches_a_setup_flash_until_done(
    page, screenshot, researcher, rig
):
    system = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(11, 6 * MiB))
    data = rig.image(ImageType.USER_DATA, "/dev/sdb", image_bytes(12))
    setup = rig.setup(system, data)
    setup.name = "debian-lab"
    setup.save()

    sign_in(page, researcher.username, PASSWORD)
    page.goto("/machines/")
    screenshot(page, "machines-list")
    page.get_by_role("link", name=rig.machine.name).click()
    expect(page.get_by_role("heading", name="Disks")).to_be_visible()
    page.get_by_label("Lease for (hours)").fill("3")
    page.get_by_role("button", name="Lease", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Leased")).to_be_visible()
    assert Lease.objects.get(machine=rig.machine, ended_at=None).user == researcher
    expect(page.get_by_label("Extend by (hours)")).to_be_visible()
    screenshot(page, "machine-detail")

    page.get_by_label("Setup", exact=True).select_option(
        label=f"debian-lab ({researcher.username})"
    )
    api_calls: list[float] = []
    page.on(
        "request",
        lambda r: api_calls.append(time.monotonic()) if "/api/deployment/" in r.url else None,
    )
    page.get_by_role("button", name="Deploy").click()
    page.wait_for_url("**/deployments/*/")
    deployment = Deployment.objects.get(machine=rig.machine)
    assert (deployment.setup_id, deployment.requested_by) == (setup.pk, researcher)
    bar = page.get_by_role("progressbar", name="Write system-sda v0 to /dev/sda")
    expect(bar).to_be_visible()

    rig.wait(deployment.pk)  # sends the watchdog as beat would, until the agent is done
    state = page.locator("#deployment-state")
    expect(state).to_have_text("Done", timeout=10_000)  # by polling: the page never reloaded
    expect(bar).to_have_attribute("value", str(system.size))
    expect(bar).to_have_attribute("max", str(system.size))
    expect(page.get_by_text("6.0\xa0MB of 6.0\xa0MB").first).to_be_visible()
    events = page.locator("#deployment-events li strong")
    expect(events.filter(has_text=re.compile(r"^done$"))).to_be_visible()
    screenshot(page, "deployment-progress")
    assert sha256_of(rig.disk("/dev/sda"), system.size) == system.sha256

    # Polling stops once the deployment is done.
    settled = len(api_calls)
    time.sleep(2.5)
    assert len(api_calls) <= settled + 1

    # Readable on a phone: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "deployment-progress-phone")


def test_the_lease_form_shows_its_errors_accessibly(page, researcher, settings):
    settings.BAAS_LEASE_MAX_HOURS = 12
    machine = MachineFactory(name="epyc-form")
    sign_in(page, researcher.username, PASSWORD)
    page.goto(f"/machines/{machine.mac_addresses.get().address}/")
    page.get_by_label("Lease for (hours)").fill("99")
    page.get_by_role("button", name="Lease", exact=True).click()
    field = page.get_by_label("Lease for (hours)")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("alert")).to_contain_text("less than or equal to 12")
    assert not Lease.objects.exists()


def test_a_refusal_of_the_lease_service_is_shown_as_a_message(page, researcher):
    """The service refuses (the machine went out of service after the page was shown);
    the page says why in the service's own words, translated once (baas_site.errors)."""
    machine = MachineFactory(name="epyc-gone")
    sign_in(page, researcher.username, PASSWORD)
    page.goto(f"/machines/{machine.mac_addresses.get().address}/")
    machine.state = "maintenance"
    machine.save()
    page.get_by_role("button", name="Lease", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("epyc-gone is out of service (maintenance).")
    assert not Lease.objects.exists()
