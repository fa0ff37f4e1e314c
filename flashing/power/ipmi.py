"""``ipmi``: ``ipmitool`` over the network (lanplus).

Settings: ``host`` (required), ``username``, ``password`` (passed in the
environment, ``-E``, never on the command line), ``port``, ``interface``
(default ``lanplus``).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from django.conf import settings

from flashing.models import Machine
from flashing.power import BootParams, PowerError, setting


def _base(machine: Machine) -> list[str]:
    tool = shutil.which("ipmitool")
    if tool is None:
        raise PowerError("ipmitool is not installed on the worker (apt-get install ipmitool).")
    command = [tool, "-I", setting(machine, "interface", required=False) or "lanplus"]
    command += ["-H", setting(machine, "host")]
    if port := setting(machine, "port", required=False):
        command += ["-p", port]
    if username := setting(machine, "username", required=False):
        command += ["-U", username]
    return [*command, "-E"]


def ipmitool(machine: Machine, *args: str) -> str:
    env = {**os.environ, "IPMI_PASSWORD": setting(machine, "password", required=False)}
    try:
        done = subprocess.run(  # noqa: S603 -- fixed arguments, no shell
            [*_base(machine), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=settings.BAAS_POWER_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise PowerError(f"{machine.name}: ipmitool {' '.join(args)} timed out.") from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise PowerError(f"{machine.name}: ipmitool {' '.join(args)} failed: {output}")
    return output


def _restart(machine: Machine) -> str:
    """Power cycle when on (``cycle`` refuses a machine that is off), else power on."""
    status = ipmitool(machine, "chassis", "power", "status")
    action = "cycle" if status.strip().lower().endswith("on") else "on"
    return ipmitool(machine, "chassis", "power", action)


class IpmiDriver:
    wants_token = False

    def boot_management(self, machine: Machine, params: BootParams | None) -> str:
        ipmitool(machine, "chassis", "bootdev", "pxe")
        return f"IPMI: next boot from the network; {_restart(machine)}"

    def boot_disk(self, machine: Machine) -> str:
        ipmitool(machine, "chassis", "bootdev", "disk")
        return f"IPMI: next boot from the disk; {_restart(machine)}"

    def boot_network(self, machine: Machine) -> str:
        ipmitool(machine, "chassis", "bootdev", "pxe")
        return f"IPMI: next boot from the network (its boot image); {_restart(machine)}"

    def power_off(self, machine: Machine) -> str:
        return ipmitool(machine, "chassis", "power", "off")
