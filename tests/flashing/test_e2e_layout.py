"""End to end in QEMU: a setup that composes one disk from a table, a system and user data.

A one-disk VM gets a setup of a partition table on /dev/vda (``root``, then
``home`` for the rest of the disk), a system image pinned to ``root``, a user
data image (ext4 labelled ``home``) pinned to ``home``, and a boot image. The
system image is a container image pushed to the local registry and imported
through the API by the real worker (layout ``filesystem``: ext4 labelled
``root``, holding what the boot image's /init looks for). The management OS's
agent writes the table and each image into its partition; the VM then boots
the boot image, whose /init finds the filesystems by label, mounts the system
as ``/`` and the user data as ``/home``, and writes a file to ``/home``. The
next deployment brings ``/home`` back as the user data image's next version,
the table kept. Software emulation on two CPUs: about 60 s (import 1.3 s,
flash 14 s, boot by label 10 s, sync and re-flash 16 s).
"""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest

from catalogue.models import ImageSetup, ImageType, Version
from catalogue.storage import get_storage
from flashing.models import DiskContent
from mgmt_os.files import write
from tests.catalogue.filesystems import fat_image
from tests.flashing.e2e import MiB, wait_for
from tests.flashing.test_e2e_vm import (  # noqa: F401 - fixtures
    BOOT_TIMEOUT,
    FLASH_TIMEOUT,
    lease,
    management_os,
    vm_rig,
)
from tests.flashing.vm import MGMT_OUT, ext4_read, run, system_initrd, tool
from tests.imports.helpers import import_version, new_system_image
from tests.imports.oci import Layout, directory, file

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# The boot image's /init: the machine's filesystems found by label, / and /home mounted.
LAYOUT_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /newroot
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /etc/modules); do insmod "$module"; done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda2 ] && break; sleep 1; done
echo "BAAS-LAYOUT: {marker} partitions: $(grep -o 'vda[0-9]*' /proc/partitions | tr '\\n' ' ')"
root=$(findfs LABEL=root)
home=$(findfs LABEL=home)
if mount -t ext4 "$root" /newroot && mount -t ext4 "$home" /newroot/home; then
    echo "BAAS-LAYOUT: {marker} / is $(cat /newroot/etc/system-id) from $root, /home from $home"
    echo "{proof}" >>/newroot/home/proof.txt
    umount /newroot/home && umount /newroot && sync
    echo "BAAS-LAYOUT: {marker} wrote /home/proof.txt"
else
    echo "BAAS-LAYOUT: {marker} cannot mount root=$root home=$home"
fi
while :; do sleep 3600; done
"""


def labelled_ext4(path, work, *, label: str, size: int, files: dict[str, str]):
    tree = work / f"{label}.d"
    for name, text in files.items():
        write(tree / name, text)
    mkfs = tool("mkfs.ext4", "e2fsprogs")
    run(mkfs, "-q", "-F", "-L", label, "-d", str(tree), str(path), f"{size // 1024}k")
    return path


def container_image(registry, tmp_path, marker: str) -> str:
    """What the boot image's /init expects on /: /etc/system-id, and /home to mount on."""
    layout = Layout(tmp_path / "oci")
    layer = [
        directory("etc"),
        file("etc/system-id", f"system {marker}"),
        directory("home"),
        file("home/.keep", ""),
    ]
    layout.tag("v1", layout.image([layer]))
    return registry.push(layout, "v1", f"lab/system-{marker}")


def test_a_vm_boots_a_disk_composed_of_a_table_a_system_and_user_data(vm_rig, registry, tmp_path):  # noqa: F811
    rig = vm_rig
    rig.disks = ("/dev/vda",)  # one disk, as most lab machines have
    marker = uuid.uuid4().hex[:12]
    proof = f"written to /home by experiment {marker}"
    started = time.monotonic()
    system = import_version(
        rig.client,
        new_system_image(rig.admin, "imported system"),
        {"oci": container_image(registry, tmp_path, marker), "label": "root", "size": 16 * MiB},
    )
    imported_in = time.monotonic() - started
    assert system.size == 16 * MiB
    home_file = labelled_ext4(
        tmp_path / "home.img", tmp_path, label="home", size=8 * MiB, files={"README": "home v0\n"}
    )
    initrd = tmp_path / "boot-initrd.img"
    system_initrd(initrd, tmp_path, LAYOUT_INIT.format(marker=marker, proof=proof))
    boot_file = fat_image(
        tmp_path / "boot.img",
        {
            "boot/vmlinuz": (MGMT_OUT / "vmlinuz").read_bytes(),
            "boot/initrd.img": initrd.read_bytes(),
            "boot/cmdline": b"console=ttyS0,115200 panic=10\n",
        },
        label="BOOT",
        size=64 * MiB,
    )

    rig.register("vm-layout", "52:54:00:ba:a5:11", server=rig.server, boot_timeout=120)
    lease(rig)
    home = rig.image(ImageType.USER_DATA, "/dev/vda", home_file.read_bytes())
    boot = rig.image(ImageType.BOOT, "/dev/vda", boot_file.read_bytes())
    base = f"/api/user/{rig.admin.username}/image_setup"
    table = {
        "disk": "/dev/vda",
        "partitions": [
            {"label": "root", "size": 24 * MiB, "type": "linux"},
            {"label": "home", "size": None, "type": "home"},
        ],
    }
    response = rig.client.post(base, {"name": "one disk", "layout": table}, format="json")
    assert response.status_code == 201, response.content
    setup_url = f"{base}/{response.json()['uuid']}/images"
    for version, partition in ((system, "root"), (home, "home"), (boot, "")):
        pinned = rig.client.post(
            setup_url,
            {"image": str(version.image_id), "version": version.number, "partition": partition},
            format="json",
        )
        assert pinned.status_code == 201, pinned.content
    setup = ImageSetup.objects.get(uuid=response.json()["uuid"])

    # 1. The agent writes the table, then each image into its partition.
    started = time.monotonic()
    first = rig.wait(rig.deploy(setup), timeout=FLASH_TIMEOUT)
    flashed_in = time.monotonic() - started
    assert first.state == "done", f"{first.failure_reason}\n{rig.console()[-3000:]}"
    disk = rig.disk("/dev/vda")
    with disk.open("rb") as handle:
        handle.seek(MiB)  # partition 1, at 1 MiB: the imported filesystem
        assert hashlib.sha256(handle.read(system.size)).hexdigest() == system.sha256
        handle.seek(25 * MiB)
        assert handle.read(home.size) == home_file.read_bytes()  # partition 2, after root
    recorded = DiskContent.objects.filter(machine=rig.machine).order_by("disk")
    assert [(c.disk, c.image_id, c.sync) for c in recorded] == [
        ("/dev/vda1", system.image_id, False),
        ("/dev/vda2", home.image_id, True),
    ]
    layout_events = [e for e in rig.detail(first.pk)["events"] if e["action"] == "layout"]
    assert layout_events[0]["message"].startswith("Partition table of /dev/vda written: ")

    # 2. The VM boots the boot image, which finds / and /home by label and writes to /home.
    wait_for(lambda: first.events.filter(action="system").exists(), "the system boot", 30)
    booted_in = rig.wait_console(
        f"BAAS-LAYOUT: {marker} wrote /home/proof.txt", timeout=BOOT_TIMEOUT
    )
    console = rig.console()
    assert f"BAAS-LAYOUT: {marker} partitions: vda vda1 vda2" in console, console[-3000:]
    assert f"/ is system {marker} from /dev/vda1, /home from /dev/vda2" in console

    # 3. The next deployment brings /home back first, as the user data image's version 1,
    # and keeps the table (and so what the partitions hold).
    started = time.monotonic()
    second = rig.wait(rig.deploy(setup, sync=True), timeout=FLASH_TIMEOUT)
    synced_in = time.monotonic() - started
    assert second.state == "done", second.failure_reason
    back = Version.objects.get(image=home.image, number=1)
    stored = get_storage().version_path(home.image.uuid, 1, home.image.compression)
    assert proof in ext4_read(stored, "proof.txt")
    assert ext4_read(stored, "README") == "home v0\n"
    assert back.size == home.size
    events = rig.detail(second.pk)["events"]
    assert any(e["action"] == "synced" and "/dev/vda2" in e["message"] for e in events)
    kept = [e["message"] for e in events if e["action"] == "layout"]
    assert kept and "already there, kept" in kept[0]
    print(
        f"\nimport {imported_in:.1f} s, flash {flashed_in:.1f} s, boot by label {booted_in:.1f} s, "
        f"sync + re-flash {synced_in:.1f} s\n{rig.timeline()}"
    )
