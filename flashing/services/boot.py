"""Network boot: the iPXE script a machine gets when it boots from the network.

While the machine has a running deployment it boots the management OS, with a
fresh one-time boot token on its kernel command line (docs/agent-protocol.md
§1); otherwise it boots from its local disk. Unknown MACs boot from their disk
and are recorded, so administrators can register them.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from flashing.models import RUNNING_STATES, Deployment, MacAddress, UnknownMac, normalize_mac
from flashing.services.common import event_record, lock
from flashing.services.tokens import token_mint

LOCAL_DISK = """#!ipxe
echo BAAS: {reason}; booting from the local disk
sanboot --no-describe --drive 0x80 || exit
"""
MANAGEMENT = """#!ipxe
echo BAAS: deployment #{deployment} on {machine}: booting the management OS
kernel {kernel} initrd=initrd.img {cmdline}
initrd --name initrd.img {initrd}
boot
"""


def unknown_mac_record(*, address: str, ip: str | None) -> None:
    now = timezone.now()
    updated = UnknownMac.objects.filter(address=address).update(
        last_seen_at=now, seen_count=F("seen_count") + 1, last_ip=ip
    )
    if not updated:
        UnknownMac.objects.get_or_create(
            address=address, defaults={"last_seen_at": now, "last_ip": ip}
        )


def _management(deployment: Deployment, mac: str, server: str) -> str:
    secret = token_mint(deployment=deployment, kind="boot")
    mgmt = f"{server}/api/boot/mgmt"
    words = [
        f"baas.server={server}",
        f"baas.mac={mac}",
        f"baas.token={secret}",
        settings.BAAS_MGMT_CMDLINE,
    ]
    event_record(
        deployment=deployment,
        actor=None,
        action="boot_script",
        message=f"{mac} fetched the management OS boot script (attempt {deployment.attempt}).",
    )
    return MANAGEMENT.format(
        deployment=deployment.pk,
        machine=deployment.machine.name,
        kernel=settings.BAAS_MGMT_KERNEL_URL or f"{mgmt}/vmlinuz",
        initrd=settings.BAAS_MGMT_INITRD_URL or f"{mgmt}/initrd.img",
        cmdline=" ".join(word for word in words if word),
    )


@transaction.atomic
def boot_script(*, mac: str, server: str, ip: str | None = None) -> str:
    """The iPXE script for ``mac``; ``server`` is BAAS's URL as the machine reaches it."""
    try:
        address = normalize_mac(mac)
    except ValidationError:
        return LOCAL_DISK.format(reason=f"{mac[:40]!r} is not a MAC address")
    known = MacAddress.objects.filter(address=address).values_list("machine_id", flat=True).first()
    if known is None:
        unknown_mac_record(address=address, ip=ip)
        return LOCAL_DISK.format(reason=f"{address} is not registered")
    running = Deployment.objects.filter(machine_id=known, state__in=RUNNING_STATES).first()
    if running is None:
        return LOCAL_DISK.format(reason=f"nothing to deploy on {address}")
    return _management(lock(Deployment, running.pk), address, server)
