"""Boot images and custom init images in deployments, through the URLs, with real filesystems."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from catalogue.models import ImageType
from catalogue.services.bootfiles import cache_dir
from catalogue.services.lifecycle import versions_prune
from flashing.models import AgentToken, Deployment, DiskContent, MachineDisk
from flashing.services.leases import lease_end
from flashing.services.pipeline import machine_advance, machine_start_next
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    write_version,
)
from tests.catalogue.filesystems import INITRD, KERNEL, boot_files, ext4_image, fat_image
from tests.flashing.agentcalls import checked_in

pytestmark = pytest.mark.django_db
KERNEL_RE = re.compile(r"^kernel (\S+)/vmlinuz initrd=initrd\.img (.*)$", re.MULTILINE)


def pinned(setup, image_type, disk, content: bytes, number: int = 1):
    image = ImageFactory(owner=setup.owner, type=image_type, target_disk=disk)
    return ImageFrozenFactory(setup=setup, version=write_version(image, number, content)).version


@pytest.fixture
def boot_content(tmp_path) -> bytes:
    return fat_image(tmp_path / "boot.img", boot_files("boot/")).read_bytes()


def deploy(client, machine, setup) -> Deployment:
    response = client.post(
        f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
    )
    assert response.status_code == 201, response.content
    return Deployment.objects.get(pk=response.json()["id"])


def script_of(machine) -> str:
    response = APIClient().get(f"/api/boot/{machine.mac}.ipxe")
    assert response.status_code == 200
    return response.content.decode()


def fetch(url: str) -> tuple[int, bytes]:
    """GET without authentication, as iPXE does: the status and the body."""
    response = APIClient().get(url.removeprefix("http://testserver"))
    # Reading a file answer to its end closes it (the test client's own way).
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response.status_code, body


def booting(client, user, machine, boot_content):
    """A setup of a boot image alone, deployed (done at once): (setup, version, URL base)."""
    setup = ImageSetupFactory(owner=user)
    version = pinned(setup, ImageType.BOOT, "/dev/sda", boot_content)
    deploy(client, machine, setup)
    machine_start_next(machine_id=machine.pk)
    return setup, version, KERNEL_RE.search(script_of(machine)).group(1)


def flash_done(machine, deployment) -> dict:
    """Start the deployment and let an agent write what it is told; the instructions."""
    machine_start_next(machine_id=machine.pk)
    agent = checked_in(machine)
    instructions = agent.get("/api/agent/instructions").json()
    written = [
        {k: entry[k] for k in ("image", "version", "disk", "sha256")}
        for entry in instructions["write"]
    ]
    for entry in instructions["write"]:  # done is taken only after progress for each write
        progress = {"image": entry["image"], "phase": "writing", "bytes_done": entry["size"]}
        response = agent.post(
            "/api/agent/progress", {**progress, "bytes_total": entry["size"]}, format="json"
        )
        assert response.status_code == 204, response.content
    response = agent.post("/api/agent/result", {"state": "done", "written": written}, format="json")
    assert response.status_code == 200, response.content
    deployment.refresh_from_db()
    assert deployment.state == "done", deployment.failure_reason
    return instructions


def test_after_the_flash_the_machine_boots_its_boot_image(user_client, user, machine, boot_content):
    setup = ImageSetupFactory(owner=user)
    system = pinned(setup, ImageType.SYSTEM, "/dev/sda", b"system" * 4096)
    boot = pinned(setup, ImageType.BOOT, "/dev/sda", boot_content)
    deployment = deploy(user_client, machine, setup)
    instructions = flash_done(machine, deployment)
    # The agent writes the system image only: the boot image is served, not written.
    assert [w["image"] for w in instructions["write"]] == [str(system.image_id)]
    recorded = DiskContent.objects.filter(machine=machine).values_list("disk", "image_id")
    assert list(recorded) == [("/dev/sda", system.image_id)]

    script = script_of(machine)
    assert script.startswith("#!ipxe\n") and "sanboot" not in script
    base, cmdline = KERNEL_RE.search(script).groups()
    assert cmdline == "console=ttyS0,115200 quiet baas.test=1"
    assert f"initrd --name initrd.img {base}/initrd.img\nboot\n" in script
    secret = base.rsplit("/", 1)[1]
    assert base == f"http://testserver/api/boot/image/{deployment.pk}/{secret}"
    assert len(secret) == 64 and str(boot.image_id) not in base
    assert fetch(f"{base}/vmlinuz") == (200, KERNEL)
    assert fetch(f"{base}/initrd.img") == (200, INITRD)
    assert deployment.events.filter(action="boot_image").exists()


def test_the_boot_files_need_the_deployments_secret(user_client, user, machine, boot_content):
    setup = ImageSetupFactory(owner=user)
    pinned(setup, ImageType.BOOT, "/dev/sda", boot_content)
    deployment = deploy(user_client, machine, setup)
    machine_start_next(machine_id=machine.pk)
    base = KERNEL_RE.search(script_of(machine)).group(1)
    secret = base.rsplit("/", 1)[1]
    forged = "0" * 64
    assert fetch(f"{base}/vmlinuz")[0] == 200
    for url in (
        f"/api/boot/image/{deployment.pk}/{forged}/vmlinuz",
        f"/api/boot/image/{deployment.pk}/{secret[:-1]}/vmlinuz",
        f"/api/boot/image/{deployment.pk}//vmlinuz",
        f"/api/boot/image/{deployment.pk}/vmlinuz",
        f"/api/boot/image/{deployment.pk + 1}/{secret}/vmlinuz",
        f"{base}/cmdline",
        f"{base}/../../../../etc/passwd",
    ):
        status, body = fetch(url)
        assert status == 404, url
        assert KERNEL not in body


def test_a_setup_of_a_boot_image_only_never_boots_the_management_os(
    user_client, user, machine, boot_content, tmp_path
):
    proof = tmp_path / "network-booted"
    machine.power_driver = "command"
    machine.power_settings = {
        "command": f"echo management >{tmp_path / 'management'}",
        "network_command": f"echo network >{proof}",
    }
    machine.save()
    setup = ImageSetupFactory(owner=user)
    boot = pinned(setup, ImageType.BOOT, "/dev/sda", boot_content)
    deployment = deploy(user_client, machine, setup)
    assert machine_start_next(machine_id=machine.pk).pk == deployment.pk
    deployment.refresh_from_db()
    assert deployment.state == "done"
    assert deployment.started_at is not None and deployment.attempt == 0
    assert not AgentToken.objects.filter(deployment=deployment).exists()
    actions = list(deployment.events.values_list("action", flat=True))
    assert actions == ["queued", "done"]
    assert "without the management OS" in deployment.events.get(action="done").message
    assert not DiskContent.objects.filter(machine=machine).exists()
    # The pipeline then network-boots the machine (its boot image), never the management OS.
    assert machine_advance(machine_id=machine.pk) == "system"
    assert proof.read_text() == "network\n"
    assert not (tmp_path / "management").exists()
    message = deployment.events.get(action="system").message
    assert message == f'Booting the boot image "{boot.image.name}" v1.'
    assert "baas.token" not in script_of(machine)
    assert KERNEL_RE.search(script_of(machine))


def test_the_boot_image_is_booted_only_while_the_lease_holds(
    user_client, user, machine, boot_content
):
    base = booting(user_client, user, machine, boot_content)[2]
    lease_end(actor=user, lease=machine.leases.get())
    assert "sanboot --no-describe --drive 0x80" in script_of(machine)
    assert fetch(f"{base}/vmlinuz")[0] == 404


def test_a_later_deployment_without_a_boot_image_boots_the_disk_again(
    user_client, user, machine, boot_content
):
    base = booting(user_client, user, machine, boot_content)[2]
    plain = ImageSetupFactory(owner=user)
    pinned(plain, ImageType.SINGLE, "/dev/sda", b"disk" * 1024)
    later = deploy(user_client, machine, plain)
    flash_done(machine, later)
    assert "sanboot" in script_of(machine)
    assert fetch(f"{base}/vmlinuz")[0] == 404


def test_a_boot_image_without_initrd_boots_its_kernel_alone(user_client, user, machine, tmp_path):
    content = ext4_image(tmp_path / "b.img", {"bzImage": KERNEL}).read_bytes()
    setup = ImageSetupFactory(owner=user)
    pinned(setup, ImageType.BOOT, "/dev/sda", content)
    deploy(user_client, machine, setup)
    machine_start_next(machine_id=machine.pk)
    script = script_of(machine)
    assert re.search(r"^kernel \S+/vmlinuz $", script, re.MULTILINE), script
    assert "initrd" not in script
    base = re.search(r"^kernel (\S+)/vmlinuz", script, re.MULTILINE).group(1)
    assert fetch(f"{base}/vmlinuz") == (200, KERNEL)
    assert fetch(f"{base}/initrd.img")[0] == 404


def test_a_custom_init_image_is_written_last_and_may_go_to_a_partition(
    user_client, user, machine, tmp_path
):
    MachineDisk.objects.create(machine=machine, path="/dev/sda", size=1 << 30)
    MachineDisk.objects.create(machine=machine, path="/dev/sdb", size=1 << 30)
    init_fs = fat_image(tmp_path / "init.img", {"run.d/10-x": b"#!/bin/sh\n"}, label="BAASINIT")
    setup = ImageSetupFactory(owner=user)
    init = pinned(setup, ImageType.CUSTOM_INIT, "/dev/sda3", init_fs.read_bytes())
    system = pinned(setup, ImageType.SYSTEM, "/dev/sda", b"system" * 4096)
    data = pinned(setup, ImageType.SINGLE, "/dev/sdb", b"data" * 4096)
    instructions = flash_done(machine, deploy(user_client, machine, setup))
    order = [(w["image"], w["disk"]) for w in instructions["write"]]
    assert order == [
        (str(system.image_id), "/dev/sda"),
        (str(data.image_id), "/dev/sdb"),
        (str(init.image_id), "/dev/sda3"),
    ]
    assert DiskContent.objects.filter(machine=machine).count() == 3


def test_an_image_for_a_disk_the_machine_lacks_is_still_refused(user_client, user, machine):
    MachineDisk.objects.create(machine=machine, path="/dev/nvme0n1", size=1 << 30)
    for disk, status in (("/dev/nvme0n1p2", 201), ("/dev/nvme0n12", 400), ("/dev/sda", 400)):
        setup = ImageSetupFactory(owner=user)
        pinned(setup, ImageType.SINGLE, disk, b"x" * 4096)
        response = user_client.post(
            f"/api/machine/{machine.mac}/boot", {"setup": str(setup.uuid)}, format="json"
        )
        assert response.status_code == status, (disk, response.content)


def test_the_deployment_page_says_the_boot_image_is_booted_not_written(
    client, user_client, user, machine, boot_content
):
    from django.urls import reverse

    setup = ImageSetupFactory(owner=user)
    boot = pinned(setup, ImageType.BOOT, "/dev/sda", boot_content)
    deployment = deploy(user_client, machine, setup)
    client.force_login(user)
    url = reverse("machines:deployment", kwargs={"deployment_id": deployment.pk})
    page = client.get(url).content.decode()
    assert f"Boot {boot.image.name} v1 over the network (a boot image)" in page


def test_retention_keeps_the_boot_image_a_machine_boots_then_drops_it_and_its_files(
    user_client, user, machine, boot_content, tmp_path, django_capture_on_commit_callbacks
):
    setup, booted, base = booting(user_client, user, machine, boot_content)
    assert fetch(f"{base}/vmlinuz") == (200, KERNEL)
    cached = cache_dir(booted.image_id, booted.sha256)
    assert cached.is_dir()
    image = booted.image
    newer_files = {**boot_files("boot/"), "boot/cmdline": b"quiet\n"}
    newer = fat_image(tmp_path / "newer.img", newer_files).read_bytes()
    write_version(image, 2, newer)
    setup.delete()  # unpinned: only the machine booting it holds it now
    image.keep_versions = 1
    image.save()

    assert versions_prune(image_uuid=image.pk) == []
    assert fetch(f"{base}/vmlinuz") == (200, KERNEL)  # the machine can still boot

    lease_end(actor=user, lease=machine.leases.get())
    with django_capture_on_commit_callbacks(execute=True):
        assert versions_prune(image_uuid=image.pk) == [1]
    assert not cached.exists()  # its extracted kernel and initrd go with it
