"""Sign-ins: who the client is, and what a locked-out person is told.

django-axes counts failed sign-ins (``baas_site.settings``, "Logins"); this
module gives it the client's address as the deployment's trusted proxy reports
it, the cool-off, and the answer shown on a lock-out: a page for the sign-in
forms, JSON under ``/api/``. ``password_check`` is the one way the API checks a
password, so every password guess counts towards the same lock-out.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import timedelta
from functools import lru_cache
from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib.auth import authenticate
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from accounts.exceptions import LoginLocked

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies if p.strip())


def address_in(address: str | None, networks: list[str] | tuple[str, ...]) -> bool:
    """Whether ``address`` is an IP address inside one of ``networks`` (CIDR strings)."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return False
    return any(ip in net for net in _networks(tuple(networks)))


def _trusted(address: str) -> bool:
    return address_in(address, settings.BAAS_TRUSTED_PROXIES)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address: ``REMOTE_ADDR``, or what a trusted proxy says it is.

    ``X-Forwarded-For`` counts only when the request comes from a proxy listed in
    ``BAAS_TRUSTED_PROXIES``; then the right-most address in it that is not itself
    a trusted proxy is the client (addresses further left are whatever the client
    sent, so they prove nothing).
    """
    remote: str | None = request.META.get("REMOTE_ADDR")
    if not remote or not _trusted(remote):
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if not _trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote  # a proxy that forwards garbage: count the proxy
    return remote


def cool_off(request: HttpRequest | None = None) -> timedelta:
    """How long a lock-out lasts after the last failed attempt."""
    return timedelta(minutes=settings.BAAS_LOGIN_COOLOFF_MINUTES)


def lockout_message() -> str:
    """The plain sentence a locked-out person reads."""
    minutes = max(1, math.ceil(cool_off().total_seconds() / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return (
        "Too many failed sign-ins for this username or from this address. "
        f"Try again in {minutes} {unit}; every further attempt before then starts the wait again."
    )


def _retry_after() -> int:
    """Seconds until a locked-out client may try again (if it waits that long)."""
    return math.ceil(cool_off().total_seconds())


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """What axes answers a locked-out sign-in: JSON under ``/api/``, a page elsewhere."""
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse({"detail": lockout_message()}, status=429)
    else:
        context = {"message": lockout_message()}
        response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(_retry_after())
    return response


def is_locked_out(request: Any, username: str) -> bool:
    """Whether ``username`` or this request's client is locked out now."""
    return not AxesProxyHandler.is_allowed(request, {"username": username})


def password_check(*, request: Any, username: str, password: str) -> Any | None:
    """The active user whose ``username`` and ``password`` these are, or None.

    Goes through ``authenticate()``, so a wrong password counts towards the
    lock-out like any other sign-in; raises ``LoginLocked`` (429) when the username
    or client was locked out before this attempt, right password or not.
    """
    locked = is_locked_out(request, username)
    # Even while locked out: axes counts the attempt, which starts the wait again.
    user = authenticate(request, username=username, password=password)
    if locked:
        raise LoginLocked(lockout_message(), _retry_after())
    return user
