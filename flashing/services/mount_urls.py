"""Where machines connect to their network mounts: the ``nbd://`` URL, its TLS key, and the
``mounts`` entries of the agent's instructions (``flashing.services.mounts`` serves them)."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from flashing import nbd
from flashing.models import Deployment, NetworkMount, NetworkMountState


def nbd_ports() -> list[int]:
    """The ports of ``BAAS_NBD_PORTS`` ("first-last", or one port)."""
    first, _, last = settings.BAAS_NBD_PORTS.partition("-")
    return list(range(int(first), int(last or first) + 1))


def nbd_host() -> str:
    """The address machines connect to: BAAS_NBD_HOST, else the bind address."""
    host: str = settings.BAAS_NBD_HOST
    if host:
        return host
    bind: str = settings.BAAS_NBD_BIND
    if bind in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding to it
        return urlsplit(settings.BAAS_PUBLIC_URL).hostname or socket.getfqdn()
    return bind


def mount_url(mount: NetworkMount) -> str | None:
    """``nbd://host:port/export`` while the export is served, else None."""
    if mount.state != NetworkMountState.READY or not mount.port:
        return None
    host = nbd_host()
    host = f"[{host}]" if ":" in host else host
    return f"nbd://{host}:{mount.port}/{mount.export_name}"


def mount_tls(mount: NetworkMount) -> dict[str, str] | None:
    """The TLS pre-shared key a client needs (None when the export is plain NBD)."""
    if not mount.tls_psk:
        return None
    return {"identity": nbd.TLS_PSK_IDENTITY, "psk": mount.tls_psk}


def mount_entries(*, deployment: Deployment) -> list[dict[str, Any]]:
    """The ``mounts`` of the agent's instructions: this deployment's network mounts only."""
    mounts = deployment.network_mounts.order_by("id")
    return [
        {
            "image": str(mount.image_id),
            "version": mount.version_number,
            "disk": mount.disk,
            "state": mount.state,
            "url": mount_url(mount),
            "tls": mount_tls(mount),
        }
        for mount in mounts
    ]
