"""End to end with a real boot: a QEMU VM network-boots, is flashed, runs what was flashed.

The machine is a virtual machine (``qemu`` power driver) with two virtio
disks as files. Its firmware's iPXE asks the live server what to boot: the
management OS (Debian kernel + initramfs running the real agent) while a
deployment runs, else its local disk, whose bootloader (SYSLINUX) starts the
flashed system. A real Celery worker on Redis and PostgreSQL run the pipeline.
Software emulation (no KVM) on two CPUs: about 75 s for the first test (2.5
minutes when the host is busy) and 30 s for the second; the first prints a
timeline of its phases. The third boots a boot image (kernel, initrd and
command line served by BAAS) without the management OS: about 16 s from the
deployment to the image's /init.

QEMU's user network shows the host as 10.0.2.2; the VM reaches the live
server (bound to 127.0.0.1) there.
"""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest

from catalogue.models import ImageType, Version
from catalogue.storage import get_storage
from flashing.models import DiskContent
from tests.catalogue.filesystems import fat_image
from tests.flashing.e2e import MiB, sha256_of, wait_for
from tests.flashing.test_e2e_delta import next_version
from tests.flashing.vm import (
    MGMT_OUT,
    VmRig,
    ext4_image,
    ext4_read,
    mgmt_os,
    system_disk,
    system_initrd,
)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

FLASH_TIMEOUT = 180.0  # seconds under software emulation; about 60 s on a busy host
BOOT_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def management_os() -> dict:
    return mgmt_os()


@pytest.fixture
def vm_rig(celery_worker, live_server, tmp_path, administrator, settings, management_os):
    """The rig, with the live server reachable from the VM at 10.0.2.2."""
    from rest_framework.test import APIClient

    server = live_server.url.replace("localhost", "10.0.2.2").replace("127.0.0.1", "10.0.2.2")
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "10.0.2.2"]
    settings.BAAS_PUBLIC_URL = server  # what the boot script tells the agent
    # A VM without a display: the serial console only (VGA output is slow under emulation).
    settings.BAAS_MGMT_CMDLINE = "console=ttyS0,115200"
    client = APIClient()
    client.force_authenticate(administrator)
    rig = VmRig(server, tmp_path, administrator, client)
    try:
        yield rig
    finally:
        rig.settle()  # the worker's last power action first: it could start the VM again
        rig.stop_agents()


def lease(rig: VmRig) -> None:
    response = rig.client.post(f"/api/machine/{rig.machine.mac}/lease", {}, format="json")
    assert response.status_code == 201, response.content


def test_a_vm_network_boots_is_flashed_and_runs_what_was_flashed(vm_rig, tmp_path):
    rig = vm_rig
    marker = uuid.uuid4().hex[:12]
    proof = f"results of experiment {marker}"
    system_file, data_file = tmp_path / "system.img", tmp_path / "data.img"
    system_disk(system_file, tmp_path, size=24 * MiB, marker=marker, proof=proof)
    ext4_image(data_file, tmp_path, size=8 * MiB, files={"README": "user data v0\n"})

    rig.register("vm1", "52:54:00:ba:a5:01", server=rig.server, boot_timeout=120)
    lease(rig)
    system = rig.image(ImageType.SYSTEM, "/dev/vda", system_file.read_bytes())
    data = rig.image(ImageType.USER_DATA, "/dev/vdb", data_file.read_bytes())

    # 1. Flash both disks: network boot, management OS, agent, verification.
    started = time.monotonic()
    first = rig.wait(rig.deploy(rig.setup(system, data)), timeout=FLASH_TIMEOUT)
    flashed_in = time.monotonic() - started
    assert first.state == "done", first.failure_reason
    assert rig.vm_pid() is not None
    for version in (system, data):
        disk = rig.disk(version.image.target_disk)
        assert sha256_of(disk, version.size) == version.sha256
    recorded = DiskContent.objects.filter(machine=rig.machine).order_by("disk")
    assert [(c.disk, c.image_id, c.version_number) for c in recorded] == [
        ("/dev/vda", system.image_id, 0),
        ("/dev/vdb", data.image_id, 0),
    ]
    console = rig.console()
    assert "BAAS-MGMT: drivers loaded; disks: vda vdb" in console, console[-3000:]
    assert "BAAS-MGMT: starting agent: baas-agent --server " + rig.server in console
    events = rig.detail(first.pk)["events"]
    assert any(e["action"] == "power" and "QEMU: started" in e["message"] for e in events)
    assert any(e["action"] == "boot_script" for e in events)  # it asked the server over iPXE

    # 2. The VM reboots into the flashed system, which runs and writes to its user data disk.
    wait_for(lambda: first.events.filter(action="system").exists(), "the system boot", 30)
    booted_in = rig.wait_console(f"BAAS-SYSTEM: {marker} wrote /proof.txt", timeout=BOOT_TIMEOUT)
    assert f"BAAS-SYSTEM: {marker} running" in rig.console()
    on_disk = ext4_read(rig.disk("/dev/vdb"), "proof.txt")
    assert proof in on_disk

    # 3. The next deployment brings the user data disk back first, as version 1.
    changed = sha256_of(rig.disk("/dev/vdb"), data.size)
    assert changed != data.sha256
    started = time.monotonic()
    second = rig.wait(rig.deploy(rig.setup(system), sync=True), timeout=FLASH_TIMEOUT)
    synced_in = time.monotonic() - started
    assert second.state == "done", second.failure_reason
    back = Version.objects.get(image=data.image, number=1)
    assert (back.sha256, back.size) == (changed, data.size)
    stored = get_storage().version_path(data.image.uuid, 1, data.image.compression)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == back.sha256
    assert proof in ext4_read(stored, "proof.txt")
    assert ext4_read(stored, "README") == "user data v0\n"
    events = rig.detail(second.pk)["events"]
    assert any(e["action"] == "synced" for e in events), events
    # The system image was on /dev/vda already, verified by reading it: not written again.
    assert any(e["action"] == "agent" and "not rewritten" in e["message"] for e in events)
    assert sha256_of(rig.disk("/dev/vda"), system.size) == system.sha256

    # 4. The system image's next version (a new initramfs): only the ranges that differ
    # are written onto the disk that holds version 0, and the machine boots it.
    marker = uuid.uuid4().hex[:12]
    next_file = tmp_path / "system-v1.img"
    system_disk(next_file, tmp_path, size=24 * MiB, marker=marker, proof=proof)
    system_v1 = next_version(system, next_file.read_bytes())
    started = time.monotonic()
    third = rig.wait(rig.deploy(rig.setup(system_v1)), timeout=FLASH_TIMEOUT)
    delta_in = time.monotonic() - started
    assert third.state == "done", third.failure_reason
    assert sha256_of(rig.disk("/dev/vda"), system_v1.size) == system_v1.sha256
    events = rig.detail(third.pk)["events"]
    delta = [
        e["message"] for e in events if e["action"] == "agent" and "delta from v0" in e["message"]
    ]
    assert delta and "written and verified" in delta[-1], [e["message"] for e in events]
    wait_for(lambda: third.events.filter(action="system").exists(), "the system boot", 30)
    rig.wait_console(f"BAAS-SYSTEM: {marker} running", timeout=BOOT_TIMEOUT)
    print(
        f"\nflash {flashed_in:.1f} s, boot into the system {booted_in:.1f} s, "
        f"sync + re-flash {synced_in:.1f} s, delta re-flash to v1 {delta_in:.1f} s "
        f"({delta[-1]})\n{rig.timeline()}"
    )
    print("\n".join(line for line in rig.console().splitlines() if "BAAS-" in line))


def test_a_vm_that_never_checks_in_fails_after_its_boot_timeout(vm_rig):
    rig = vm_rig
    # Its iPXE asks a port where nothing listens: it never gets the management OS.
    rig.register("vm2", "52:54:00:ba:a5:02", server="http://10.0.2.2:9", boot_timeout=8)
    lease(rig)
    version = rig.image(ImageType.SINGLE, "/dev/vda", bytes(MiB))
    started = time.monotonic()
    deployment = rig.wait(rig.deploy(rig.setup(version)), timeout=90)
    elapsed = time.monotonic() - started
    assert deployment.state == "failed"
    assert "did not check in within 8 s" in deployment.failure_reason, deployment.failure_reason
    assert elapsed >= 8
    events = rig.detail(deployment.pk)["events"]
    assert any(e["action"] == "power" and "QEMU: started" in e["message"] for e in events)
    assert any("did not check in within 8 s" in e["message"] for e in events)
    assert not any(e["action"] == "boot_script" for e in events)
    assert not DiskContent.objects.filter(machine=rig.machine).exists()


# The boot image's /init: proves on the console which kernel, initrd and command line booted.
BOOT_IMAGE_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
echo "BAAS-BOOTIMAGE: {marker} running, kernel $(uname -r), cmdline $(cat /proc/cmdline)"
while :; do sleep 3600; done
"""


def test_a_vm_boots_a_boot_image_over_ipxe_without_the_management_os(vm_rig, tmp_path):
    rig = vm_rig
    marker = uuid.uuid4().hex[:12]
    initrd = tmp_path / "boot-initrd.img"
    system_initrd(initrd, tmp_path, BOOT_IMAGE_INIT.format(marker=marker))
    files = {
        "boot/vmlinuz": (MGMT_OUT / "vmlinuz").read_bytes(),
        "boot/initrd.img": initrd.read_bytes(),
        "boot/cmdline": f"console=ttyS0,115200 panic=10\nbaas.experiment={marker}\n".encode(),
    }
    boot = fat_image(tmp_path / "boot.img", files, label="BOOT", size=64 * MiB)

    rig.register("vm3", "52:54:00:ba:a5:03", server=rig.server, boot_timeout=120)
    lease(rig)
    version = rig.image(ImageType.BOOT, "/dev/vda", boot.read_bytes())
    started = time.monotonic()
    deployment = rig.wait(rig.deploy(rig.setup(version)), timeout=30)
    assert deployment.state == "done", deployment.failure_reason
    booted_in = rig.wait_console(f"BAAS-BOOTIMAGE: {marker} running", timeout=BOOT_TIMEOUT)
    console = rig.console()
    assert f"initrd.img console=ttyS0,115200 panic=10 baas.experiment={marker}\n" in console
    assert "BAAS-MGMT" not in console  # the management OS never ran
    assert not DiskContent.objects.filter(machine=rig.machine).exists()  # nothing written
    events = rig.detail(deployment.pk)["events"]
    assert [e["action"] for e in events][:2] == ["queued", "done"]
    assert any(e["action"] == "boot_image" for e in events)  # iPXE asked for it
    print(
        f"\npower-on to the boot image's /init: {time.monotonic() - started:.1f} s "
        f"(console wait {booted_in:.1f} s)"
    )
