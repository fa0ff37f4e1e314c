"""Network boot: the iPXE script a machine gets when it boots from the network.

While the machine has a running deployment it boots the management OS. The
first script of an *armed* boot attempt (BAAS powered the machine on for it, or
a person asked for a manual boot: ``deployment_boot_again``) carries the
attempt's one boot token on the kernel command line (docs/agent-protocol.md
§1, docs/security.md); every later fetch in the same attempt boots the local
disk instead, and is recorded on the deployment with the caller's address.

Once a deployment whose setup names a boot image is done, and while its
lease holds, the machine boots that image's kernel, initrd and command line
(``catalogue.services.bootfiles``), fetched from URLs that carry a secret of
that deployment (iPXE cannot authenticate; nobody else can read the files).
Otherwise it boots from its local disk. Unknown MACs boot from their disk and
are recorded, so administrators can register them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from accounts import rules
from baas_site.exceptions import NotFound
from catalogue.interface import BootImageError, version_boot_files
from flashing.models import (
    RUNNING_STATES,
    Deployment,
    DeploymentImage,
    DeploymentState,
    Lease,
    MacAddress,
    UnknownMac,
    normalize_mac,
)
from flashing.services.common import (
    Conflict,
    boot_image_row,
    event_record,
    lock,
    lock_machine,
)
from flashing.services.pipeline import timeouts
from flashing.services.states import attempt_restart
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


# Refused machine calls recorded per deployment, action and window (anyone can make them).
REFUSALS_RECORDED = 5
REFUSALS_WINDOW = timedelta(minutes=1)

BOOT_IMAGE = """#!ipxe
echo BAAS: deployment #{deployment} on {machine}: booting boot image {image} v{version}
kernel {base}/vmlinuz{initrd_arg} {cmdline}
{initrd_line}boot
"""


def unknown_mac_record(*, address: str, ip: str | None) -> bool:
    """Note that ``address`` (registered to no machine) asked for a boot script.

    Anyone can ask, so the writes are bounded: a MAC's row is updated at most
    once per ``BAAS_UNKNOWN_MAC_INTERVAL`` seconds, at most
    ``BAAS_UNKNOWN_MACS_NEW_PER_INTERVAL`` new MACs are recorded per interval,
    and at most ``BAAS_UNKNOWN_MACS_MAX`` rows are kept (the least recently
    seen dropped). Returns whether anything was written.
    """
    now = timezone.now()
    since = now - timedelta(seconds=max(settings.BAAS_UNKNOWN_MAC_INTERVAL, 0))
    if UnknownMac.objects.filter(address=address).exists():
        updated = UnknownMac.objects.filter(address=address, last_seen_at__lte=since).update(
            last_seen_at=now, seen_count=F("seen_count") + 1, last_ip=ip
        )
        return bool(updated)
    limit = max(settings.BAAS_UNKNOWN_MACS_MAX, 0)
    recent = UnknownMac.objects.filter(first_seen_at__gt=since).count()
    if limit == 0 or recent >= settings.BAAS_UNKNOWN_MACS_NEW_PER_INTERVAL:
        return False
    _unknown_macs_make_room(limit - 1)
    _, created = UnknownMac.objects.get_or_create(
        address=address, defaults={"last_seen_at": now, "last_ip": ip}
    )
    return created


def _unknown_macs_make_room(keep: int) -> None:
    """Drop the least recently seen unknown MACs beyond the ``keep`` most recent ones."""
    stale = UnknownMac.objects.order_by("-last_seen_at", "-id").values_list("pk", flat=True)[keep:]
    extra = list(stale)
    if extra:
        UnknownMac.objects.filter(pk__in=extra).delete()


def _token_refusal(deployment: Deployment) -> str | None:
    """Why this fetch of the boot script gets no boot token, or None when it gets one.

    One boot token per attempt, handed out once the attempt is armed: BAAS
    powered the machine on for it (``pipeline._claim_power``, which hands it
    to token-taking power drivers itself) or a person asked for a manual boot.
    """
    attempt = deployment.attempt
    if deployment.boot_token_attempt >= attempt:
        return (
            f"the boot token of attempt {attempt} was handed out already "
            "(ask for a manual boot to start a new attempt)"
        )
    if deployment.powered_attempt < attempt:
        return f"attempt {attempt} is not armed yet: BAAS has not powered the machine on for it"
    return None


def refusal_record(*, deployment: Deployment, action: str, message: str, **data: Any) -> None:
    """Record a refused machine call (``boot_refused``, ``checkin_refused``), boundedly.

    Anyone can make such calls, so at most ``REFUSALS_RECORDED`` of each
    ``action`` are recorded per deployment per ``REFUSALS_WINDOW``: the first
    ones, which matter.
    """
    since = timezone.now() - REFUSALS_WINDOW
    recent = deployment.events.filter(action=action, created_at__gt=since)
    if recent.count() < REFUSALS_RECORDED:
        event_record(deployment=deployment, actor=None, action=action, message=message, **data)


def _refused(deployment: Deployment, mac: str, ip: str | None, refusal: str) -> str:
    """The local disk script for a fetch that gets no token, recorded on the deployment."""
    refusal_record(
        deployment=deployment,
        action="boot_refused",
        message=f"{mac} fetched the management OS boot script from "
        f"{ip or 'an unknown address'}, but {refusal}: it was told to boot its local disk.",
        address=ip,
    )
    return LOCAL_DISK.format(
        reason=f"deployment #{deployment.pk} on {deployment.machine.name}: {refusal}"
    )


def _management(deployment: Deployment, mac: str, server: str, ip: str | None) -> str:
    """The management OS script with the attempt's boot token, if it is not handed out yet."""
    refusal = _token_refusal(deployment)
    if refusal is not None:
        return _refused(deployment, mac, ip, refusal)
    secret = token_mint(deployment=deployment, kind="boot")
    deployment.boot_token_attempt = deployment.attempt
    deployment.save(update_fields=["boot_token_attempt", "updated_at"])
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
        message=f"{mac} fetched the management OS boot script from "
        f"{ip or 'an unknown address'}: the boot token of attempt {deployment.attempt} "
        "was handed out.",
        address=ip,
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
    assert row.version is not None  # boot_image_current skips a row whose version is gone
    value = f"{deployment.pk}:{row.image_id}:{row.version_number}:{row.version.sha256}"
    return salted_hmac("baas.boot-image", value, algorithm="sha256").hexdigest()


def _boot_image(deployment: Deployment, row: DeploymentImage, mac: str, server: str) -> str:
    assert row.version is not None  # boot_image_current skips a row whose version is gone
    files = version_boot_files(row.version)
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

    ``NotFound`` unless ``secret`` is that deployment's and the deployment is still
    the one its machine boots (``boot_image_current``): a wrong secret, an
    ended lease and a later deployment all look alike.
    """
    deployment = Deployment.objects.filter(pk=deployment_id).only("machine_id").first()
    current = boot_image_current(machine_id=deployment.machine_id) if deployment else None
    if current is None or current[0].pk != deployment_id:
        raise NotFound("No such boot file.")
    if not constant_time_compare(secret, boot_image_secret(*current)):
        raise NotFound("No such boot file.")
    version = current[1].version
    assert version is not None  # boot_image_current skips a row whose version is gone
    try:
        path = version_boot_files(version).path(name)
    except BootImageError:
        path = None
    if path is None:
        raise NotFound("No such boot file.")
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
    return _management(lock(Deployment, running.pk), address, server, ip)


# --- A manual boot: a new attempt, armed by a person ---------------------------------------


def deployment_get_bootable(*, actor: Any, deployment_id: int) -> Deployment:
    """The deployment, if ``actor`` may ask for a manual boot of it; 404 otherwise.

    Its requester, the holder of the (still active) lease it was asked for
    under, and administrators may. Not whoever leases its machine now: a reset
    that brings the previous user's data back belongs to no lease, and its
    boot token must not reach the next user.
    """
    deployment = Deployment.objects.select_related("machine").filter(pk=deployment_id).first()
    if deployment is None or not rules.is_authenticated(actor):
        raise NotFound("No such deployment, or not yours.")
    lessee = Lease.objects.filter(deployments=deployment, ended_at=None, user=actor.pk)
    if not (
        rules.is_administrator(actor) or deployment.requested_by_id == actor.pk or lessee.exists()
    ):
        raise NotFound("No such deployment, or not yours.")
    return deployment


@transaction.atomic
def deployment_boot_again(*, actor: Any, deployment: Deployment) -> Deployment:
    """Start a new boot attempt of a running deployment, armed for a person to boot it.

    The caller read ``deployment`` through ``deployment_get_bootable``. The
    previous attempt's tokens are revoked (its agent can no longer report);
    the machine's next network boot gets the new attempt's one boot token.
    BAAS does not power the machine itself: a person boots it. 409 unless the
    deployment runs.
    """
    lock_machine(deployment.machine)
    deployment = lock(Deployment, deployment.pk)
    if deployment.state not in RUNNING_STATES:
        raise Conflict(
            f"Deployment #{deployment.pk} is {deployment.state}; only a running deployment "
            "can be booted again."
        )
    attempt_restart(deployment, timezone.now())
    deployment.powered_attempt = deployment.attempt  # armed: a person powers it
    deployment.save(update_fields=["powered_attempt", "updated_at"])
    boot_timeout = timeouts(deployment.machine)[0]
    event_record(
        deployment=deployment,
        actor=actor,
        action="boot_again",
        message=f"{actor} asked for a manual boot: attempt {deployment.attempt} is armed. "
        f"Boot {deployment.machine.name} from the network within {boot_timeout} s; the "
        "earlier attempt's agent can no longer report.",
    )
    return deployment
