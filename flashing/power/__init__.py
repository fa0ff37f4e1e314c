"""Power drivers: how BAAS boots a machine into the management OS or its own system.

Each driver is a small class with four calls, each raising :class:`PowerError`
with a message a person can act on:

* ``boot_management(machine, params)`` — network boot (PXE) into the management
  OS; ``params`` carries what the iPXE script would (server URL, MAC, a fresh
  one-time token, deployment id);
* ``boot_disk(machine)`` — boot the machine's own system from its local disk;
* ``boot_network(machine)`` — network boot without the management OS: iPXE
  asks BAAS and gets the boot image of the machine's last deployment;
* ``power_off(machine)``.

Drivers: ``manual`` (a person does it), ``command`` (a configured shell
command), ``ipmi`` (``ipmitool``), ``redfish`` (HTTP), ``qemu`` (a virtual
machine on the worker's host, for labs without hardware and for the tests).
Settings come from ``Machine.power_settings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flashing.models import Machine, PowerDriver


class PowerError(Exception):
    """A power action failed; the message says why."""


@dataclass(frozen=True)
class BootParams:
    server: str
    mac: str
    token: str
    deployment: int

    def environment(self) -> dict[str, str]:
        return {
            "BAAS_SERVER": self.server,
            "BAAS_MAC": self.mac,
            "BAAS_TOKEN": self.token,
            "BAAS_DEPLOYMENT": str(self.deployment),
        }


class Driver(Protocol):
    #: Whether the driver needs a fresh boot token (the iPXE script mints its own).
    wants_token: bool

    def boot_management(self, machine: Machine, params: BootParams | None) -> str: ...

    def boot_disk(self, machine: Machine) -> str: ...

    def boot_network(self, machine: Machine) -> str: ...

    def power_off(self, machine: Machine) -> str: ...


def driver_for(machine: Machine) -> Driver:
    from flashing.power import command, ipmi, manual, qemu, redfish

    drivers: dict[str, type[Driver]] = {
        PowerDriver.MANUAL: manual.ManualDriver,
        PowerDriver.COMMAND: command.CommandDriver,
        PowerDriver.IPMI: ipmi.IpmiDriver,
        PowerDriver.REDFISH: redfish.RedfishDriver,
        PowerDriver.QEMU: qemu.QemuDriver,
    }
    try:
        return drivers[machine.power_driver]()
    except KeyError:
        raise PowerError(f"Unknown power driver {machine.power_driver!r}.") from None


def setting(machine: Machine, name: str, *, required: bool = True) -> str:
    value = (machine.power_settings or {}).get(name)
    if required and value in (None, ""):
        raise PowerError(
            f"{machine.name}: the {machine.power_driver} power driver needs the setting "
            f"{name!r} (set it in the machine's power settings)."
        )
    return "" if value is None else str(value)
