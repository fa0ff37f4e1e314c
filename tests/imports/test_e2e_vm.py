"""End to end in QEMU: a container image from the local registry becomes a system image, the
real agent flashes it, and the VM boots it — as a whole disk (layout 'disk': SYSLINUX, the
image's own kernel and initramfs), and as a filesystem booted by a BAAS boot image whose
initramfs mounts root=LABEL=… (the pair of docs/registry-images.md).

The container image holds the management OS's Debian kernel (``apt-get download``, as
``mgmt_os`` builds it) in /boot, an initramfs whose /init finds the root filesystem by its
label, mounts it and prints the marker file it holds, and that marker file. Slow (software
emulation): about two minutes each.
"""

from __future__ import annotations

import time
import uuid

import pytest

from catalogue.models import ImageType
from tests.catalogue.filesystems import fat_image
from tests.flashing.e2e import MiB
from tests.flashing.test_e2e_vm import BOOT_TIMEOUT, FLASH_TIMEOUT, lease, management_os, vm_rig
from tests.flashing.vm import MGMT_OUT, system_initrd
from tests.imports.helpers import import_version, new_system_image
from tests.imports.oci import Layout, directory, file

__all__ = ["management_os", "vm_rig"]  # fixtures of the flashing end-to-end tests

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROOT_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /newroot
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /etc/modules); do insmod "$module"; done
root=$(sed -n 's/.*root=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
dev=""
for _ in 1 2 3 4 5 6 7 8 9 10; do dev=$(findfs "$root" 2>/dev/null) && break; sleep 1; done
if [ -n "$dev" ] && mount -t ext4 -o ro "$dev" /newroot; then
    echo "BAAS-SYSTEM: {marker} root $root is $dev: $(cat /newroot/etc/marker)"
else
    echo "BAAS-SYSTEM: {marker} cannot mount $root"
fi
while :; do sleep 3600; done
"""


def container_image(registry, tmp_path, marker: str, manifest: dict) -> str:
    """A container image with a Debian kernel, its initramfs and a marker; pushed."""
    release = manifest["kernel"]["release"]
    initrd = tmp_path / "initrd.img"
    system_initrd(initrd, tmp_path, ROOT_INIT.format(marker=marker))
    layout = Layout(tmp_path / "oci")
    layer = [
        directory("boot"),
        file(f"boot/vmlinuz-{release}", (MGMT_OUT / "vmlinuz").read_bytes()),
        file(f"boot/initrd.img-{release}", initrd.read_bytes()),
        directory("etc"),
        file("etc/marker", f"imported {marker}\n"),
    ]
    layout.tag("boot", layout.image([layer]))
    return registry.push(layout, "boot", f"lab/bootable-{marker}")


def test_an_imported_disk_boots_on_its_own(vm_rig, registry, tmp_path, management_os):
    rig = vm_rig
    rig.disk_size = 256 * MiB
    marker = uuid.uuid4().hex[:12]
    reference = container_image(registry, tmp_path, marker, management_os)
    started = time.monotonic()
    version = import_version(
        rig.client, new_system_image(rig.admin, "imported-disk"),
        {"oci": reference, "layout": "disk", "label": "sysroot"},
    )  # fmt: skip
    imported_in = time.monotonic() - started

    rig.register("vm-import-1", "52:54:00:ba:a6:01", server=rig.server, boot_timeout=120)
    lease(rig)
    deployment = rig.wait(rig.deploy(rig.setup(version)), timeout=FLASH_TIMEOUT)
    assert deployment.state == "done", deployment.failure_reason
    booted_in = rig.wait_console(
        f"BAAS-SYSTEM: {marker} root LABEL=sysroot is /dev/vda2: imported {marker}",
        timeout=BOOT_TIMEOUT,
    )
    print(f"\nimport {imported_in:.1f} s, boot after the flash {booted_in:.1f} s")


def test_an_imported_filesystem_boots_with_a_boot_image(vm_rig, registry, tmp_path, management_os):
    rig = vm_rig
    rig.disk_size = 256 * MiB
    marker = uuid.uuid4().hex[:12]
    reference = container_image(registry, tmp_path, marker, management_os)
    system = import_version(
        rig.client,
        new_system_image(rig.admin, "imported-fs"),
        {"oci": reference, "label": "fsroot"},
    )
    initrd = tmp_path / "boot-initrd.img"
    system_initrd(initrd, tmp_path / "boot", ROOT_INIT.format(marker=marker))
    files = {
        "boot/vmlinuz": (MGMT_OUT / "vmlinuz").read_bytes(),
        "boot/initrd.img": initrd.read_bytes(),
        "boot/cmdline": b"console=ttyS0,115200 panic=10 root=LABEL=fsroot\n",
    }
    boot = rig.image(
        ImageType.BOOT, "/dev/vda",
        fat_image(tmp_path / "boot.img", files, label="BOOT", size=64 * MiB).read_bytes(),
    )  # fmt: skip

    rig.register("vm-import-2", "52:54:00:ba:a6:02", server=rig.server, boot_timeout=120)
    lease(rig)
    deployment = rig.wait(rig.deploy(rig.setup(boot, system)), timeout=FLASH_TIMEOUT)
    assert deployment.state == "done", deployment.failure_reason
    rig.wait_console(
        f"BAAS-SYSTEM: {marker} root LABEL=fsroot is /dev/vda: imported {marker}",
        timeout=BOOT_TIMEOUT,
    )
    assert "BAAS-MGMT: starting agent" in rig.console()  # the agent flashed the filesystem
