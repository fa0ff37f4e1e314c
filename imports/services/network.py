"""Which hosts an import may reach: not BAAS itself, not a private address, unless allowed.

A URL or registry whose host resolves to a loopback, private, link-local,
multicast or reserved address, or names this server, is refused unless the host
is listed in ``BAAS_IMPORT_ALLOWED_HOSTS``; the refusal says so. The addresses
checked are returned, so a caller that connects itself connects to them (no
second lookup that could answer differently).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

from imports.exceptions import ImportRefused


def host_allowed(host: str) -> bool:
    return host.lower() in {h.lower() for h in settings.BAAS_IMPORT_ALLOWED_HOSTS}


def _own_hosts() -> set[str]:
    hosts = {h.lower().lstrip(".") for h in settings.ALLOWED_HOSTS if h not in ("*", "")}
    if settings.BAAS_PUBLIC_URL:
        hosts.add((urlsplit(settings.BAAS_PUBLIC_URL).hostname or "").lower())
    return hosts - {""}


def check_host(host: str, port: int) -> list[str]:
    """The addresses of ``host`` an import may connect to; ImportRefused if none may be."""
    hint = (
        "Imports do not reach BAAS itself or private networks unless an administrator "
        f"lists the host in BAAS_IMPORT_ALLOWED_HOSTS; {host!r} is not listed."
    )
    if host.lower() in _own_hosts() and not host_allowed(host):
        raise ImportRefused(f"{host!r} is this BAAS server. {hint}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImportRefused(f"The host {host!r} is unknown ({exc}); nothing was stored.") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if host_allowed(host):
        return addresses
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise ImportRefused(f"{host!r} resolves to {address}, a non-public address. {hint}")
    return addresses
