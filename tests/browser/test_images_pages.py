"""The image and setup pages in a real browser: create, upload with progress, download, errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from catalogue.models import Image, ImageFrozen, ImageSetup, Version
from tests.accounts.factories import PASSWORD, UserFactory
from tests.browser.conftest import sign_in
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.catalogue.filesystems import boot_files, fat_image

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024


@pytest.fixture
def person():
    return UserFactory(username="ada", display_name="Ada Lovelace")


def _upload(page, path, sha256: str = "") -> None:
    page.get_by_label("Image file").set_input_files(str(path))
    if sha256:
        page.get_by_label("Expected SHA-256").fill(sha256)
    page.get_by_role("button", name="Upload", exact=True).click()


def test_a_user_creates_an_image_uploads_a_version_and_downloads_it(
    page, person, screenshot, tmp_path
):
    sign_in(page, person.username, PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Images").click()
    page.get_by_role("link", name="New image").click()
    screenshot(page, "image-new")
    page.get_by_label("Name").fill("my-kernel")
    page.get_by_label("Type").select_option(label="Boot")
    page.get_by_label("Target disk").fill("/dev/vda")
    page.get_by_role("button", name="Create image").click()
    expect(page.get_by_role("heading", name="my-kernel", level=1)).to_be_visible()
    image = Image.objects.get(name="my-kernel", owner=person)
    assert page.url.endswith(f"/images/{image.pk}/")

    # A boot image takes a boot partition: a FAT filesystem holding a kernel.
    path = fat_image(tmp_path / "disk.img", boot_files(), size=3 * MiB)
    content = path.read_bytes()
    _upload(page, path)
    bar = page.get_by_role("progressbar")
    expect(page.get_by_role("status").filter(has_text="Version 1 uploaded")).to_be_visible()
    expect(bar).to_have_js_property("value", 100)
    row = page.get_by_role("row").filter(has_text="v1")
    expect(row).to_contain_text(hashlib.sha256(content).hexdigest())
    expect(row).to_contain_text("3.0\xa0MB")
    version = Version.objects.get(image=image, number=1)
    assert (version.size, version.uploaded_by) == (len(content), person)
    screenshot(page, "image-detail")

    with page.expect_download() as info:
        page.get_by_role("link", name="Download version 1").click()
    assert info.value.suggested_filename.startswith("my-kernel-v1")
    with open(info.value.path(), "rb") as downloaded:
        assert downloaded.read() == content

    page.get_by_role("link", name="Images", exact=True).first.click()
    expect(page.get_by_role("link", name="my-kernel")).to_be_visible()
    screenshot(page, "images")


def test_upload_errors_from_the_api_are_shown(page, person, settings, tmp_path):
    image = ImageFactory(owner=person, name="raw-disk")
    VersionFactory(image=image, number=0)
    sign_in(page, person.username, PASSWORD)
    page.goto(f"/images/{image.pk}/")
    alert = page.locator("#upload-error")

    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "1M"], check=True)
    _upload(page, qcow2)
    expect(alert).to_contain_text("The upload was refused: This is a raw image")
    expect(alert).to_be_focused()

    data = tmp_path / "data.img"
    data.write_bytes(b"x" * MiB)
    _upload(page, data, sha256="0" * 64)
    expect(alert).to_contain_text("SHA-256")
    expect(alert).to_contain_text("Nothing was stored")

    settings.BAAS_MAX_IMAGE_SIZE = MiB
    page.reload()
    big = tmp_path / "big.img"
    big.write_bytes(b"y" * (MiB + 4096))
    _upload(page, big)
    expect(alert).to_contain_text("The file is too large:")
    assert list(image.versions.values_list("number", flat=True)) == [0]


def test_a_user_builds_a_setup_and_cannot_delete_a_pinned_image(page, person, screenshot):
    image = ImageFactory(owner=person, name="debian", target_disk="/dev/sda")
    for number in (0, 1):
        VersionFactory(image=image, number=number)
    data = ImageFactory(owner=person, name="home", type="user_data", target_disk="/dev/sdb")
    VersionFactory(image=data, number=0)
    sign_in(page, person.username, PASSWORD)
    expect(page.get_by_role("region", name="My images")).to_contain_text("debian")
    screenshot(page, "home-mine")
    page.get_by_role("link", name="Setups").click()
    page.get_by_role("link", name="New setup").click()
    page.get_by_label("Name").fill("kernel-lab")
    page.get_by_role("button", name="Create setup").click()
    expect(page.get_by_role("heading", name="kernel-lab")).to_be_visible()

    picker = page.get_by_label("Image and version")
    picker.select_option(value=f"{image.pk}:0")
    page.get_by_label("Target disk").fill("/dev/nvme0n1")
    page.get_by_role("button", name="Add to setup").click()
    picker.select_option(value=f"{data.pk}:0")
    page.get_by_role("button", name="Add to setup").click()
    expect(page.get_by_role("row").filter(has_text="home")).to_contain_text("/dev/sdb")
    expect(page.get_by_role("row").filter(has_text="debian")).to_contain_text("/dev/nvme0n1")

    picker.select_option(value=f"{image.pk}:1")
    page.get_by_role("button", name="Add to setup").click()
    expect(page.get_by_role("alert")).to_contain_text("already in setup")
    screenshot(page, "setup-detail")

    setup = ImageSetup.objects.get(name="kernel-lab", owner=person)
    pinned = {f.image.name: (f.version.number, f.sync, f.disk) for f in setup.frozen_images.all()}
    assert pinned == {"debian": (0, False, "/dev/nvme0n1"), "home": (0, True, "/dev/sdb")}

    page.get_by_role("link", name="debian").click()
    page.get_by_role("link", name="Delete").click()
    page.get_by_role("button", name="Delete the image").click()
    expect(page.get_by_role("alert")).to_contain_text('pinned in the setup(s) "kernel-lab"')
    assert Image.objects.filter(pk=image.pk).exists()

    page.goto(f"/setups/{setup.pk}/")
    page.get_by_role("button", name="Remove debian from the setup").click()
    expect(page.get_by_role("status").filter(has_text="removed")).to_be_visible()
    assert not ImageFrozen.objects.filter(setup=setup, image=image).exists()
    page.goto(f"/images/{image.pk}/delete/")
    page.get_by_role("button", name="Delete the image").click()
    expect(page.get_by_role("status").filter(has_text="deleted")).to_be_visible()
    assert not Image.objects.filter(pk=image.pk).exists()


def test_the_pages_fit_a_phone(page, person, screenshot):
    image = ImageFactory(owner=person, name="phone-test")
    VersionFactory(image=image, number=0)
    sign_in(page, person.username, PASSWORD)
    page.set_viewport_size({"width": 390, "height": 844})
    for url, name in [("/", "home-phone"), (f"/images/{image.pk}/", "image-detail-phone")]:
        page.goto(url)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"{url} scrolls sideways ({width}px)"
        screenshot(page, name)


def test_a_file_dropped_on_the_drop_zone_is_uploaded(page, person):
    image = ImageFactory(owner=person, name="dropped")
    VersionFactory(image=image, number=0)
    sign_in(page, person.username, PASSWORD)
    page.goto(f"/images/{image.pk}/")
    drop = page.evaluate_handle(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(256 * 1024).fill(7)], "dropped.img"));
            return data;
        }"""
    )
    page.locator("#dropzone").dispatch_event("drop", {"dataTransfer": drop})
    expect(page.get_by_role("status").filter(has_text="Version 1 uploaded")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="v1")).to_contain_text("256.0\xa0KB")
    assert (
        Version.objects.get(image=image, number=1).sha256
        == hashlib.sha256(bytes([7]) * 256 * 1024).hexdigest()
    )


def test_an_image_is_created_with_the_keyboard_alone(page, person):
    sign_in(page, person.username, PASSWORD)
    page.goto("/images/new/")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.get_by_label("Name").focus()
    page.keyboard.type("typed")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="typed", level=1)).to_be_visible()
    assert Image.objects.filter(name="typed", owner=person).exists()


def test_the_commands_shown_on_the_page_upload_only_the_data(page, person, screenshot, tmp_path):
    """The upload section's hint: the ``baas`` commands it shows, run as shown (the password
    on standard input), store the disk as the next version; the older client still downloads."""
    image = ImageFactory(owner=person, name="big-disk")
    VersionFactory(image=image, number=0)
    sign_in(page, person.username, PASSWORD)
    page.goto(f"/images/{image.pk}/")
    page.get_by_text("A large disk file? Send only its data").click()
    commands = page.locator("#upload-client pre").inner_text().splitlines()
    screenshot(page, "image-detail-upload-client")
    with page.expect_download() as download:
        page.get_by_role("link", name="upload client").click()
    assert download.value.suggested_filename == "baas-upload"

    disk = tmp_path / "disk.img"
    data = os.urandom(64 * 1024) + bytes(8 << 20) + os.urandom(4096)
    disk.write_bytes(data)
    baas = Path(sys.executable).with_name("baas")
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("BAAS_URL", None), env.pop("BAAS_TOKEN", None)
    for command, stdin in zip(commands, [PASSWORD + "\n", ""], strict=True):
        words = command.split()
        assert words[0] == "baas"
        extra = ["--password-stdin"] if words[1] == "login" else []
        result = subprocess.run(
            [str(baas), *words[1:], *extra], input=stdin, cwd=tmp_path, env=env,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    version = Version.objects.get(image=image, number=1)
    assert version.sha256 == hashlib.sha256(data).hexdigest()
