"""``manual``: a person powers the machine; BAAS waits (the boot timeout still applies)."""

from __future__ import annotations

from flashing.models import Machine
from flashing.power import BootParams


class ManualDriver:
    wants_token = False

    def boot_management(self, machine: Machine, params: BootParams | None) -> str:
        return (
            f"Waiting for a person to network-boot {machine.name} "
            "(PXE: it then gets the management OS)."
        )

    def boot_disk(self, machine: Machine) -> str:
        return f"Waiting for a person to boot {machine.name} from its local disk."

    def boot_network(self, machine: Machine) -> str:
        return (
            f"Waiting for a person to network-boot {machine.name} "
            "(PXE: it then gets its boot image)."
        )

    def power_off(self, machine: Machine) -> str:
        return f"Waiting for a person to power {machine.name} off."
