"""End to end: boot and custom init images with a live server, a real worker and the real agent."""

from __future__ import annotations

import re
import urllib.request

import pytest

from catalogue.models import ImageType
from flashing.models import DiskContent
from tests.catalogue.filesystems import (
    INITRD,
    KERNEL,
    boot_files,
    fat_image,
    fat_label,
    fat_read,
    run,
    tool,
)
from tests.flashing.e2e import image_bytes, sha256_of, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
HELLO = b'#!/bin/sh\necho "hello from the first boot" >/dev/console\n'


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the live server
        return response.read()


def test_the_custom_init_image_lands_on_its_disk_after_the_system_image(rig, tmp_path):
    init_fs = fat_image(tmp_path / "init.img", {"run.d/10-hello": HELLO}, label="BAASINIT")
    init = rig.image(ImageType.CUSTOM_INIT, "/dev/sdc", init_fs.read_bytes())
    system = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(11))
    boot = rig.image(
        ImageType.BOOT, "/dev/sdb", fat_image(tmp_path / "b.img", boot_files()).read_bytes()
    )
    # Pinned first, written last.
    deployment = rig.wait(rig.deploy(rig.setup(init, system, boot)))
    assert deployment.state == "done", deployment.failure_reason

    assert sha256_of(rig.disk("/dev/sda"), system.size) == system.sha256
    written = rig.disk("/dev/sdc")
    assert sha256_of(written, init.size) == init.sha256
    assert fat_label(written) == "BAASINIT"  # what the first-boot hook looks for
    assert fat_read(written, "run.d/10-hello") == HELLO
    assert not rig.disk("/dev/sdb").exists()  # the boot image is served, never written
    logs = rig.agent_logs()
    assert "instructions: 0 to sync, 2 to write" in logs
    assert logs.index(f"image {system.image_id} v0 on /dev/sda: writing") < logs.index(
        f"image {init.image_id} v0 on /dev/sdc: writing"
    )
    recorded = DiskContent.objects.filter(machine=rig.machine).order_by("disk")
    assert [(c.disk, c.image_id) for c in recorded] == [
        ("/dev/sda", system.image_id),
        ("/dev/sdc", init.image_id),
    ]

    # The machine's next network boot gets the boot image, from the live server.
    wait_for(lambda: deployment.events.filter(action="system").exists(), "the system boot")
    script = get(f"{rig.server}/api/boot/{rig.machine.mac}.ipxe").decode()
    base = re.search(r"^kernel (\S+)/vmlinuz initrd=initrd.img ", script, re.MULTILINE).group(1)
    assert get(f"{base}/vmlinuz") == KERNEL
    assert get(f"{base}/initrd.img") == INITRD


def test_a_setup_of_a_boot_image_only_is_done_without_the_agent(rig, tmp_path):
    boot = rig.image(
        ImageType.BOOT, "/dev/sda", fat_image(tmp_path / "b.img", boot_files("boot/")).read_bytes()
    )
    deployment = rig.wait(rig.deploy(rig.setup(boot)), timeout=10)
    assert deployment.state == "done", deployment.failure_reason
    wait_for(lambda: deployment.events.filter(action="system").exists(), "the network boot")
    assert rig.agent_pids() == []  # the management OS (here: its agent) never started
    assert "without the management OS" in deployment.events.get(action="done").message
    script = get(f"{rig.server}/api/boot/{rig.machine.mac}.ipxe").decode()
    assert "console=ttyS0,115200 quiet baas.test=1" in script
    base = re.search(r"^kernel (\S+)/vmlinuz ", script, re.MULTILINE).group(1)
    assert get(f"{base}/vmlinuz") == KERNEL


def test_the_next_deployment_writes_the_custom_init_image_afresh(rig, tmp_path):
    init_fs = fat_image(tmp_path / "init.img", {"run.d/10-hello": HELLO}, label="BAASINIT")
    init = rig.image(ImageType.CUSTOM_INIT, "/dev/sdc", init_fs.read_bytes())
    setup = rig.setup(init)
    first = rig.wait(rig.deploy(setup))
    assert first.state == "done", first.failure_reason
    # The system booted; its first-boot hook recorded on the filesystem what ran.
    disk = rig.disk("/dev/sdc")
    record = tmp_path / "ran"
    record.write_text("10-hello started 2026-01-01T00:00:00Z\n10-hello exit 0\n")
    run(tool("mmd"), "-i", disk, "::/.baas-init")
    run(tool("mcopy"), "-i", disk, record, "::/.baas-init/ran")
    assert sha256_of(disk, init.size) != init.sha256
    second = rig.wait(rig.deploy(setup))
    assert second.state == "done", second.failure_reason
    # Written again, without the record: its programs run once more, once per deployment.
    assert sha256_of(disk, init.size) == init.sha256
    assert rig.agent_logs().count(f"image {init.image_id} v0 on /dev/sdc: written and") == 2
