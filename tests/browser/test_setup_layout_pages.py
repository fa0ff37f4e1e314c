"""A setup that composes one disk, built on the dashboard in a real browser under the site's
Content-Security-Policy: a table of two partitions, a system image in one, user data in the
other, and a readable refusal for an image larger than its partition."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from accounts.models import Role
from catalogue.models import ImageSetup, ImageType
from tests.accounts.factories import PASSWORD, UserFactory
from tests.browser.conftest import sign_in
from tests.catalogue.factories import ImageFactory, VersionFactory

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1 << 20


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


@pytest.fixture
def researcher():
    return UserFactory(username="grace", role=Role.USER)


@pytest.fixture
def images(researcher):
    """Two system images an administrator shares (one too big for the root partition)
    and the researcher's own user data; all meant for /dev/sda."""
    admin = UserFactory(role=Role.ADMINISTRATOR)
    made = {}
    for name, kind, owner, size in [
        ("debian-system", ImageType.SYSTEM, admin, 2 * MiB),
        ("big-system", ImageType.SYSTEM, admin, 6 * MiB),
        ("grace-home", ImageType.USER_DATA, researcher, MiB),
    ]:
        image = ImageFactory(owner=owner, name=name, type=kind, target_disk="/dev/sda")
        made[name] = VersionFactory(image=image, number=0, content=b"\1" * size)
    return made


def _pin(page, version, partition: str) -> None:
    page.get_by_label("Image and version").select_option(value=f"{version.image_id}:0")
    page.get_by_label("Partition (optional)").select_option(value=partition)
    page.get_by_role("button", name="Add to setup").click()


def test_a_researcher_composes_one_disk_from_a_system_and_a_user_data_image(
    page, researcher, images, violations, screenshot
):
    sign_in(page, researcher.username, PASSWORD)
    response = page.goto("/setups/new/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.get_by_label("Name").fill("one-disk")
    page.get_by_role("button", name="Create setup").click()
    expect(page.get_by_role("heading", name="one-disk", level=1)).to_be_visible()
    expect(page.get_by_role("region", name="Partition table", exact=True)).to_contain_text(
        "No partition table"
    )

    editor = page.get_by_role("region", name="Declare a partition table")
    expect(editor.get_by_label("Disk", exact=True)).to_have_value("/dev/sda")
    editor.get_by_label("Label of partition 1").fill("root")
    editor.get_by_label("Size of partition 1").fill("4M")
    url = page.url
    editor.get_by_role("button", name="Add a partition").click()  # the script adds a row
    expect(editor.get_by_label("Label of partition 3")).to_be_focused()
    assert page.url == url
    editor.get_by_label("Label of partition 3").fill("home")
    editor.get_by_label("Partition 3 takes the rest of the disk").check()
    editor.get_by_label("Type of partition 3").fill("home")
    editor.get_by_role("button", name="Save the partition table").click()
    expect(page.get_by_role("status")).to_contain_text('The partition table of "one-disk" is saved')

    setup = ImageSetup.objects.get(name="one-disk", owner=researcher)
    assert setup.layout == {
        "disk": "/dev/sda",
        "partitions": [
            {"label": "root", "size": 4 * MiB, "type": "linux"},
            {"label": "home", "size": None, "type": "home"},
        ],
    }
    table = page.get_by_role("region", name="Partition table", exact=True)
    expect(table.get_by_role("row").filter(has_text="root")).to_contain_text("/dev/sda1")
    expect(table.get_by_role("row").filter(has_text="root")).to_contain_text("4 MiB")
    expect(table.get_by_role("row").filter(has_text="home")).to_contain_text("Rest of the disk")

    _pin(page, images["big-system"], "root")
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_text("partition 'root' holds 4194304 bytes (4.0 MiB)")).to_contain_text(
        'Version 0 of "big-system" is 6291456 bytes (6.0 MiB)'
    )
    assert not setup.frozen_images.exists()
    screenshot(page, "setup-layout-refused")

    _pin(page, images["debian-system"], "root")
    expect(page.get_by_role("status")).to_contain_text("Image added to the setup.")
    _pin(page, images["grace-home"], "home")
    expect(page.get_by_role("status")).to_contain_text("Image added to the setup.")

    rows = page.get_by_role("region", name="Partition table", exact=True).get_by_role("row")
    expect(rows.filter(has_text="root")).to_contain_text("debian-system v0")
    expect(rows.filter(has_text="home")).to_contain_text("grace-home v0 (synced back)")
    pinned = {f.image.name: (f.partition, f.disk, f.sync) for f in setup.frozen_images.all()}
    assert pinned == {
        "debian-system": ("root", "/dev/sda1", False),
        "grace-home": ("home", "/dev/sda2", True),
    }
    screenshot(page, "setup-layout")
    page.wait_for_load_state("networkidle")
    assert violations == []


def test_the_table_is_declared_without_scripts(browser, live_server, researcher):
    """Progressive enhancement: with scripts off, "Add a partition" asks the server for a row."""
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        sign_in(page, researcher.username, PASSWORD)
        page.get_by_role("link", name="Setups").click()
        page.get_by_role("link", name="New setup").click()
        page.get_by_label("Name").fill("plain")
        page.get_by_role("button", name="Create setup").click()
        for number, label in [(1, "boot"), (2, "root")]:
            page.get_by_label(f"Label of partition {number}").fill(label)
            page.get_by_label(f"Size of partition {number}").fill("1.5M" if number == 2 else "8M")
        page.get_by_label("Type of partition 1").fill("esp")
        page.get_by_role("button", name="Add a partition").click()
        page.get_by_label("Label of partition 3").fill("data")
        page.get_by_label("Partition 3 takes the rest of the disk").check()
        page.get_by_role("button", name="Save the partition table").click()
        expect(page.get_by_role("alert")).to_contain_text(
            "Partition 2 ('root') is 1572864 bytes: a size is a positive whole number of MiB"
        )
        setup = ImageSetup.objects.get(name="plain", owner=researcher)
        assert setup.layout is None  # nothing half-saved

        page.get_by_label("Size of partition 2").fill("2G")
        page.get_by_role("button", name="Save the partition table").click()
        expect(page.get_by_role("status")).to_contain_text("is saved")
        setup.refresh_from_db()
        assert [(p["label"], p["size"]) for p in setup.layout["partitions"]] == [
            ("boot", 8 * MiB),
            ("root", 2 << 30),
            ("data", None),
        ]

        page.get_by_role("button", name="Remove the partition table").click()
        expect(page.get_by_role("status")).to_contain_text("is removed")
        setup.refresh_from_db()
        assert setup.layout is None
    finally:
        context.close()
