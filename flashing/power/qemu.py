"""``qemu``: the machine is a QEMU virtual machine on the worker's host.

How a lab without hardware tries BAAS, and how the tests prove that a machine
network-boots, is flashed by the real agent and comes up running what was
flashed. The VM behaves like a lab machine whose firmware always boots from
the network: its iPXE asks BAAS for ``/api/boot/<mac>.ipxe`` at every boot and
gets the management OS while a deployment runs, else "boot from the local
disk" (``sanboot`` of the first disk, whose bootloader starts the system).

Powering on starts the VM when it is not running, and resets it when it is
(a guest that powered itself off stays paused, ``-no-shutdown``, so a reset
brings it back): booting the management OS and booting the system are the same
action, the server's iPXE answer makes the difference. Powering off stops it
(QMP ``quit``, then SIGTERM, then SIGKILL).

Settings (``Machine.power_settings``):

* ``disks`` (required): the guest's disks, device → file on the worker's host,
  e.g. ``{"/dev/vda": "/srv/vm/a.img", "/dev/vdb": "/srv/vm/b.img"}``; virtio
  disks named ``/dev/vda``, ``/dev/vdb``, … without gaps (the guest names them
  in the order they are attached). A missing file is created, sparse, with the
  size of the machine's disk of that path.
* ``server``: BAAS's URL as the VM reaches it (default ``BAAS_PUBLIC_URL`` with
  a loopback host replaced by ``10.0.2.2``, the host on QEMU's user network).
* ``memory`` (MiB, default 512), ``cpus`` (default 1).
* ``state_dir``: where the pid file, the QMP socket and the serial console log
  (``serial.log``, appended to across boots) live (default
  ``<BAAS_VAR_DIR>/qemu/<machine name>``).
* ``accel``: ``tcg`` (software emulation, the default: it works everywhere) or
  ``kvm`` (many times faster, where KVM really works: inside containers and
  nested VMs ``/dev/kvm`` may exist and still fail on the firmware's real mode).
* ``qemu``: the emulator (default ``qemu-system-x86_64``).
* ``extra_args``: more QEMU arguments, a list or a shell-quoted string.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from io import BufferedIOBase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

from flashing.models import Machine
from flashing.power import BootParams, PowerError, setting

QEMU_HOST = "10.0.2.2"  # the host, as the guest sees it on QEMU's user network
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}  # noqa: S104 -- names, not binds
DISK_RE = re.compile(r"^/dev/vd([a-z])\Z")
STOP_TIMEOUT = 10.0
QMP_TIMEOUT = 10.0
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes


# --- settings ---------------------------------------------------------------------------


def state_dir(machine: Machine) -> Path:
    configured = setting(machine, "state_dir", required=False)
    if configured:
        return Path(configured)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", machine.name)
    return Path(settings.VAR_DIR) / "qemu" / safe


def serial_log(machine: Machine) -> Path:
    """The VM's serial console, every boot appended."""
    return state_dir(machine) / "serial.log"


def server_url(machine: Machine) -> str:
    """BAAS's URL as the VM reaches it."""
    configured = setting(machine, "server", required=False)
    if configured:
        return configured.rstrip("/")
    url = settings.BAAS_PUBLIC_URL or "http://127.0.0.1:8000"
    parts = urlsplit(url)
    if (parts.hostname or "") in LOOPBACK:
        netloc = QEMU_HOST + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts).rstrip("/")


def boot_url(machine: Machine) -> str:
    return f"{server_url(machine)}/api/boot/{_mac(machine)}.ipxe"


def _mac(machine: Machine) -> str:
    mac = machine.mac_addresses.order_by("id").values_list("address", flat=True).first()
    if not mac:
        raise PowerError(f"{machine.name} has no MAC address: the VM needs one to boot.")
    return mac


def _disks(machine: Machine) -> list[tuple[str, Path]]:
    """(device, file) in attachment order; missing files are created sparse."""
    disks = (machine.power_settings or {}).get("disks")
    if not isinstance(disks, dict) or not disks:
        raise PowerError(
            f"{machine.name}: the qemu power driver needs the setting 'disks', e.g. "
            '{"/dev/vda": "/srv/vm/a.img"} (device in the VM → file on the host).'
        )
    letters = []
    for device in disks:
        match = DISK_RE.match(device)
        if not match:
            raise PowerError(f"{machine.name}: {device!r} is not a virtio disk (/dev/vda, …).")
        letters.append(match.group(1))
    if sorted(letters) != [chr(ord("a") + i) for i in range(len(letters))]:
        raise PowerError(
            f"{machine.name}: the VM's disks are named in the order they are attached: "
            "use /dev/vda, /dev/vdb, … without gaps."
        )
    sizes = dict(machine.disks.values_list("path", "size"))
    found = []
    for device in sorted(disks):
        path = Path(str(disks[device]))
        if not path.is_absolute():
            raise PowerError(f"{machine.name}: the file of {device} is not an absolute path.")
        if not path.exists():
            if device not in sizes:
                raise PowerError(
                    f"{machine.name}: {path} (for {device}) does not exist and the machine "
                    f"has no disk {device} whose size would create it."
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("xb") as handle:
                handle.truncate(sizes[device])
        found.append((device, path))
    return found


def _extra_args(machine: Machine) -> list[str]:
    extra = (machine.power_settings or {}).get("extra_args") or []
    if isinstance(extra, str):
        return shlex.split(extra)
    if not isinstance(extra, list):
        raise PowerError(f"{machine.name}: 'extra_args' is a list or a string.")
    return [str(arg) for arg in extra]


def _opt(value: object) -> str:
    """A value inside a QEMU option list (commas doubled)."""
    return str(value).replace(",", ",,")


def command_line(machine: Machine) -> list[str]:
    """The QEMU command that starts the machine's VM (daemonized)."""
    name = setting(machine, "qemu", required=False) or "qemu-system-x86_64"
    qemu = shutil.which(name)
    if qemu is None:
        raise PowerError(
            f"{name} is not installed on the worker (apt-get install qemu-system-x86 ipxe-qemu)."
        )
    state = state_dir(machine)
    qmp = state / "qmp.sock"
    if len(str(qmp)) > SOCKET_PATH_MAX:
        raise PowerError(f"{machine.name}: the state_dir path is too long for a socket: {state}")
    command = [
        qemu,
        *("-name", _opt(f"baas-{machine.name}")),
        *("-accel", setting(machine, "accel", required=False) or "tcg"),
        *("-m", str(int(setting(machine, "memory", required=False) or 512))),
        *("-smp", str(int(setting(machine, "cpus", required=False) or 1))),
        *("-display", "none", "-no-shutdown", "-daemonize"),
        *("-pidfile", str(state / "qemu.pid")),
        *("-qmp", f"unix:{_opt(qmp)},server=on,wait=off"),
        *("-chardev", f"file,id=serial0,path={_opt(state / 'serial.log')},append=on"),
        *("-serial", "chardev:serial0"),
        *("-netdev", f"user,id=net0,bootfile={_opt(boot_url(machine))}"),
        *("-device", f"virtio-net-pci,netdev=net0,mac={_mac(machine)}"),
        *("-boot", "n"),
    ]
    for index, (device, path) in enumerate(_disks(machine)):
        drive = f"disk{index}"
        command += [
            "-drive",
            f"file={_opt(path)},format=raw,if=none,id={drive},discard=unmap,detect-zeroes=unmap",
            "-device",
            f"virtio-blk-pci,drive={drive},serial=baas-{device.rsplit('/', 1)[1]}",
        ]
    return command + _extra_args(machine)


# --- the running VM ---------------------------------------------------------------------


@contextlib.contextmanager
def _locked(machine: Machine) -> Iterator[Path]:
    """One power action at a time per VM."""
    state = state_dir(machine)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PowerError(f"{machine.name}: cannot create the state_dir {state}: {exc}") from exc
    with (state / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield state


def running_pid(machine: Machine) -> int | None:
    """The pid of the machine's QEMU, if it runs (checked: not a reused pid)."""
    pidfile = state_dir(machine) / "qemu.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(pidfile).encode() in cmdline.split(b"\0") else None


def qmp(machine: Machine, *commands: str) -> list[dict]:
    """Run QMP commands on the machine's VM; their answers (``return`` values)."""
    path = str(state_dir(machine) / "qmp.sock")
    answers = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(QMP_TIMEOUT)
            sock.connect(path)
            stream = sock.makefile("rwb")
            _qmp_read(stream)  # the greeting
            for command in ("qmp_capabilities", *commands):
                stream.write(json.dumps({"execute": command}).encode() + b"\r\n")
                stream.flush()
                answers.append(_qmp_answer(stream, command))
    except OSError as exc:
        raise PowerError(f"{machine.name}: QMP at {path} failed: {exc}") from exc
    return answers[1:]


def _qmp_read(stream: BufferedIOBase) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        raise OSError("QEMU closed the QMP connection")
    message: dict[str, Any] = json.loads(line)
    return message


def _qmp_answer(stream: BufferedIOBase, command: str) -> dict[str, Any]:
    while True:
        message = _qmp_read(stream)
        if "return" in message:
            answer: dict[str, Any] = message["return"]
            return answer
        if "error" in message:
            raise OSError(f"{command}: {message['error'].get('desc', message['error'])}")
        # else an asynchronous event (RESET, SHUTDOWN, …): skip it


def _start(machine: Machine) -> str:
    command = command_line(machine)
    try:
        done = subprocess.run(  # noqa: S603 -- a fixed command, no shell
            command,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=settings.BAAS_POWER_TIMEOUT,
            start_new_session=True,  # the VM outlives a worker restart
        )
    except subprocess.TimeoutExpired:
        raise PowerError(f"{machine.name}: QEMU did not start within its power timeout.") from None
    except OSError as exc:
        raise PowerError(f"{machine.name}: QEMU could not run: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise PowerError(f"{machine.name}: QEMU exited with {done.returncode}: {output}")
    pid = running_pid(machine)
    return (
        f"QEMU: started the VM of {machine.name} (pid {pid}); it boots from the network "
        f"({boot_url(machine)}); console: {serial_log(machine)}"
    )


def _boot(machine: Machine) -> str:
    """Start the VM, or reset it when it runs: either way iPXE asks BAAS what to boot."""
    with _locked(machine):
        pid = running_pid(machine)
        if pid is None:
            return _start(machine)
        qmp(machine, "system_reset", "cont")
        return f"QEMU: reset the VM of {machine.name} (pid {pid}); it boots from the network."


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


def _stop(machine: Machine) -> str:
    with _locked(machine):
        pid = running_pid(machine)
        if pid is None:
            return f"QEMU: the VM of {machine.name} is not running."
        with contextlib.suppress(PowerError):
            qmp(machine, "quit")
        if _wait_gone(pid, STOP_TIMEOUT):
            return f"QEMU: stopped the VM of {machine.name} (pid {pid})."
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, STOP_TIMEOUT):
                return f"QEMU: stopped the VM of {machine.name} (pid {pid}, {sig.name})."
        raise PowerError(f"{machine.name}: QEMU (pid {pid}) does not stop.")


class QemuDriver:
    wants_token = False  # the VM's iPXE fetches its script, which carries a fresh token

    def boot_management(self, machine: Machine, params: BootParams | None) -> str:
        return _boot(machine)

    def boot_disk(self, machine: Machine) -> str:
        return _boot(machine)

    def boot_network(self, machine: Machine) -> str:
        return _boot(machine)

    def power_off(self, machine: Machine) -> str:
        return _stop(machine)
