"""The ``qemu`` power driver: its settings, its command line, and a real VM started and stopped.

The end-to-end boot of a VM through the whole pipeline is tests/flashing/test_e2e_vm.py.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from flashing.models import MachineDisk
from flashing.power import PowerError, driver_for, qemu
from tests.flashing.factories import MachineFactory

pytestmark = pytest.mark.django_db

MAC = "52:54:00:ba:a5:10"


@pytest.fixture
def machine(tmp_path):
    machine = MachineFactory(power_driver="qemu", mac=MAC)
    MachineDisk.objects.create(machine=machine, path="/dev/vda", size=8 << 20)
    MachineDisk.objects.create(machine=machine, path="/dev/vdb", size=4 << 20)
    machine.power_settings = {
        "disks": {"/dev/vdb": str(tmp_path / "b.img"), "/dev/vda": str(tmp_path / "a.img")},
        "state_dir": str(tmp_path / "vm"),
    }
    machine.save()
    return machine


def arguments(command: list[str], option: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == option]


@pytest.fixture
def has_qemu():
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: ./dev installs qemu-system-x86")


def test_the_vm_boots_from_the_network_with_its_mac_and_disks_in_order(
    machine, tmp_path, settings, has_qemu
):
    settings.BAAS_PUBLIC_URL = "http://127.0.0.1:8000"
    command = qemu.command_line(machine)
    assert "-no-shutdown" in command and "-daemonize" in command
    assert arguments(command, "-boot") == ["n"]
    assert arguments(command, "-accel") == ["tcg"]
    # The host's loopback, as the VM reaches it on QEMU's user network.
    url = f"http://10.0.2.2:8000/api/boot/{MAC}.ipxe"
    assert arguments(command, "-netdev") == [f"user,id=net0,bootfile={url}"]
    assert f"virtio-net-pci,netdev=net0,mac={MAC}" in arguments(command, "-device")
    drives = arguments(command, "-drive")
    assert [d.split(",")[0] for d in drives] == [
        f"file={tmp_path / 'a.img'}",
        f"file={tmp_path / 'b.img'}",
    ]
    # Missing disk files are created sparse, with the size of the machine's disk.
    assert (tmp_path / "a.img").stat().st_size == 8 << 20
    assert (tmp_path / "b.img").stat().st_blocks == 0


def test_settings_change_the_command_line(machine, has_qemu):
    machine.power_settings |= {
        "server": "http://baas.lab:8000/",
        "memory": 1024,
        "cpus": 2,
        "accel": "kvm",
        "extra_args": "-cpu host -name 'x y'",
    }
    command = qemu.command_line(machine)
    assert arguments(command, "-netdev")[0].endswith(
        f"bootfile=http://baas.lab:8000/api/boot/{MAC}.ipxe"
    )
    assert (arguments(command, "-m"), arguments(command, "-smp")) == (["1024"], ["2"])
    assert arguments(command, "-accel") == ["kvm"]
    assert command[-4:] == ["-cpu", "host", "-name", "x y"]


@pytest.mark.parametrize(
    ("disks", "message"),
    [
        (None, "needs the setting 'disks'"),
        ({"/dev/sda": "/tmp/a.img"}, "is not a virtio disk"),
        ({"/dev/vda": "/tmp/a.img", "/dev/vdc": "/tmp/c.img"}, "without gaps"),
        ({"/dev/vda": "relative.img"}, "not an absolute path"),
    ],
)
def test_bad_disk_settings_are_explained(machine, disks, message, has_qemu):
    machine.power_settings["disks"] = disks
    with pytest.raises(PowerError, match=message):
        qemu.command_line(machine)


def test_a_missing_disk_without_a_registered_size_is_refused(machine, tmp_path, has_qemu):
    MachineDisk.objects.filter(machine=machine, path="/dev/vdb").delete()
    with pytest.raises(PowerError, match="does not exist"):
        qemu.command_line(machine)


def test_a_stale_pid_file_is_not_a_running_vm(machine, tmp_path):
    state = tmp_path / "vm"
    state.mkdir()
    (state / "qemu.pid").write_text(f"{os.getpid()}\n")  # alive, but not this VM's QEMU
    assert qemu.running_pid(machine) is None
    assert "is not running" in driver_for(machine).power_off(machine)


def test_power_on_starts_the_vm_a_second_resets_it_power_off_stops_it(machine, has_qemu):
    driver = driver_for(machine)
    assert driver.wants_token is False  # iPXE's script carries the token
    try:
        assert "QEMU: started the VM" in driver.boot_management(machine, None)
        pid = qemu.running_pid(machine)
        assert pid is not None
        assert qemu.qmp(machine, "query-status")[0]["status"] == "running"
        assert "QEMU: reset the VM" in driver.boot_disk(machine)
        assert qemu.running_pid(machine) == pid  # the same VM, reset
        assert "stopped" in driver.power_off(machine)
        assert not Path(f"/proc/{pid}").exists()
        assert qemu.running_pid(machine) is None
    finally:
        if (pid := qemu.running_pid(machine)) is not None:
            os.kill(pid, 9)
            time.sleep(0.1)
