"""Network boot: the iPXE script a machine gets when it boots from the network.

While the machine has a running deployment it boots the management OS, with a
fresh one-time boot token on its kernel command line (docs/agent-protocol.md
§1). Once a deployment whose setup names a boot image is done, and while its
lease holds, the machine boots that image's kernel, initrd and command line
(``catalogue.services.bootfiles``), fetched from URLs that carry a secret of
that deployment (iPXE cannot authenticate; nobody else can read the files).
Otherwise it boots from its local disk. Unknown MACs boot from their disk and
are recorded, so administrators can register them.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.http import Http404
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from catalogue.services.bootfiles import BootImageError, boot_files_for
from flashing.models import (
    RUNNING_STATES,
    Deployment,
    DeploymentImage,
    DeploymentState,
    MacAddress,
    UnknownMac,
    normalize_mac,
)
from flashing.services.common import boot_image_row, event_record, lock
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


BOOT_IMAGE = """#!ipxe
echo BAAS: deployment #{deployment} on {machine}: booting boot image {image} v{version}
kernel {base}/vmlinuz{initrd_arg} {cmdline}
{initrd_line}boot
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


# --- Boot images -----------------------------------------------------------------------


def boot_image_current(*, machine_id: int) -> tuple[Deployment, DeploymentImage] | None:
    """The deployment whose boot image the machine boots now, and that image; else None.

    That is the machine's last finished (not cancelled) deployment, when it is
    done, nothing runs, its lease (if it had one) still holds and the boot
    image's version still exists.
    """
    if Deployment.objects.filter(machine_id=machine_id, state__in=RUNNING_STATES).exists():
        return None
    last = (
        Deployment.objects.filter(machine_id=machine_id)
        .exclude(finished_at=None)
        .exclude(state=DeploymentState.CANCELLED)
        .select_related("lease", "machine")
        .order_by("-finished_at", "-id")
        .first()
    )
    if last is None or last.state != DeploymentState.DONE:
        return None
    if last.lease is not None and last.lease.ended_at is not None:
        return None
    row = boot_image_row(last)
    if row is None or row.version is None:
        return None
    return last, row


def boot_image_secret(deployment: Deployment, row: DeploymentImage) -> str:
    """The secret in the boot image's URLs: unguessable, and this deployment's own."""
    value = f"{deployment.pk}:{row.image_id}:{row.version_number}:{row.version.sha256}"
    return salted_hmac("baas.boot-image", value, algorithm="sha256").hexdigest()


def _boot_image(deployment: Deployment, row: DeploymentImage, mac: str, server: str) -> str:
    files = boot_files_for(row.version)
    base = f"{server}/api/boot/image/{deployment.pk}/{boot_image_secret(deployment, row)}"
    has_initrd = files.initrd is not None
    event_record(
        deployment=deployment,
        actor=None,
        action="boot_image",
        message=f"{mac} fetched the boot script of boot image {row.image_id} "
        f"v{row.version_number}.",
    )
    return BOOT_IMAGE.format(
        deployment=deployment.pk,
        machine=deployment.machine.name,
        image=row.image_id,
        version=row.version_number,
        base=base,
        initrd_arg=" initrd=initrd.img" if has_initrd else "",
        cmdline=files.cmdline,
        initrd_line=f"initrd --name initrd.img {base}/initrd.img\n" if has_initrd else "",
    )


def boot_image_file(*, deployment_id: int, secret: str, name: str) -> Path:
    """The file ``name`` (``vmlinuz``, ``initrd.img``) of the boot image a machine boots now.

    Http404 unless ``secret`` is that deployment's and the deployment is still
    the one its machine boots (``boot_image_current``): a wrong secret, an
    ended lease and a later deployment all look alike.
    """
    deployment = Deployment.objects.filter(pk=deployment_id).only("machine_id").first()
    current = boot_image_current(machine_id=deployment.machine_id) if deployment else None
    if current is None or current[0].pk != deployment_id:
        raise Http404("No such boot file.")
    if not constant_time_compare(secret, boot_image_secret(*current)):
        raise Http404("No such boot file.")
    try:
        path = boot_files_for(current[1].version).path(name)
    except BootImageError:
        path = None
    if path is None:
        raise Http404("No such boot file.")
    return path


# --- The script ---------------------------------------------------------------------------


def _not_running(machine_id: int, address: str, server: str) -> str:
    current = boot_image_current(machine_id=machine_id)
    if current is None:
        return LOCAL_DISK.format(reason=f"nothing to deploy on {address}")
    try:
        return _boot_image(*current, address, server)
    except (BootImageError, OSError) as exc:
        event_record(
            deployment=current[0],
            actor=None,
            action="boot_image",
            message=f"The boot image cannot be read, so {address} boots its disk: {exc}",
        )
        return LOCAL_DISK.format(reason="its boot image cannot be read")


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
        return _not_running(known, address, server)
    return _management(lock(Deployment, running.pk), address, server)
