"""The main pages work under the Content-Security-Policy: no violation, scripts running.

Chromium reports every blocked inline script, inline style, eval or foreign
resource on the console ("Refused to … because it violates the following
Content Security Policy directive"). Each test walks a page through what its
scripts do (upload, live progress, the API docs rendering the schema) and
fails on any such report or page error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from accounts.models import Role
from catalogue.services.images import image_create
from flashing.models import DeploymentImage, DeploymentState
from tests.accounts.factories import PASSWORD, UserFactory
from tests.browser.conftest import sign_in
from tests.catalogue.factories import ImageFrozenFactory, ImageSetupFactory, VersionFactory
from tests.flashing.factories import DeploymentFactory, LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def violations(page) -> Iterator[list[str]]:
    """Every CSP report and uncaught script error of ``page``; must stay empty."""
    seen: list[str] = []
    page.on(
        "console",
        lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.on("pageerror", lambda error: seen.append(f"page error: {error}"))
    yield seen
    assert seen == []


def visit(page, url: str) -> None:
    """Open ``url``, which must come with the policy (so an empty report means something)."""
    response = page.goto(url)
    assert "script-src 'self'" in response.headers["content-security-policy"]


@pytest.fixture
def person(settings):
    settings.BAAS_NEW_IMAGE_SIZE = 1 << 20
    return UserFactory(role=Role.USER)


def test_the_dashboard_and_tokens_page_break_no_policy(page, person, violations):
    sign_in(page, person.username, PASSWORD)
    visit(page, "/")
    page.get_by_role("link", name="Tokens").click()
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_label("Secret")).to_have_value(re.compile(r"^baas_"))
    page.wait_for_load_state("networkidle")
    assert violations == []


def test_an_upload_from_the_image_page_runs_under_the_policy(page, person, violations, tmp_path):
    image = image_create(actor=person, owner=person, name="disk")
    sign_in(page, person.username, PASSWORD)
    visit(page, f"/images/{image.uuid}/")
    path = tmp_path / "disk.img"
    path.write_bytes(b"\x01" * 65536)
    page.get_by_label("Image file").set_input_files(str(path))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="Version 1 uploaded")).to_be_visible()
    assert violations == []


def test_the_deployment_page_updates_its_progress_under_the_policy(page, person, violations):
    version = VersionFactory(image=image_create(actor=person, owner=person, name="os"), number=1)
    setup = ImageSetupFactory(owner=person)
    ImageFrozenFactory(setup=setup, version=version)
    machine = MachineFactory()
    LeaseFactory(machine=machine, user=person)
    deployment = DeploymentFactory(
        machine=machine, requested_by=person, setup=setup, state=DeploymentState.WRITING
    )
    item = DeploymentImage.objects.create(
        deployment=deployment,
        image=version.image,
        version=version,
        version_number=1,
        disk="/dev/sda",
        bytes_total=4 << 20,
    )
    sign_in(page, person.username, PASSWORD)
    visit(page, f"/deployments/{deployment.pk}/")
    bar = page.get_by_role("progressbar")
    expect(bar).to_have_js_property("value", 0)
    DeploymentImage.objects.filter(pk=item.pk).update(bytes_done=1 << 20)
    expect(bar).to_have_js_property("value", 1 << 20)  # deployment.js polled the API
    assert violations == []


def test_the_api_docs_render_the_schema_under_the_policy(page, person, violations):
    sign_in(page, person.username, PASSWORD)
    visit(page, "/api/docs/")
    expect(page.locator(".opblock").first).to_be_visible()
    expect(page.get_by_text("/api/user/me").first).to_be_visible()
    assert violations == []


def test_the_admin_breaks_no_policy(page, violations):
    admin = UserFactory(role=Role.ADMINISTRATOR)
    sign_in(page, admin.username, PASSWORD)
    visit(page, "/admin/")
    expect(page.get_by_role("heading", name="Users, images and machines")).to_be_visible()
    visit(page, "/admin/accounts/user/")
    expect(page.locator("#result_list")).to_be_visible()
    assert violations == []
