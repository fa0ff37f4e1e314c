"""A disk image at a URL as an image's next version, decoded exactly as an upload.

The URL's host is checked (:mod:`.network`) and the connection made to the very
address checked, so a second lookup cannot lead elsewhere; redirects are
followed (at most 5), each checked again. The body streams into the
catalogue's upload path (``catalogue.interface.version_store_stream``: raw,
qcow2, gzip, zstd or Android sparse, recognised from the first bytes) with the
SHA-256 it must match; a mismatch, the size limit, a cancel or a stalled read
stores nothing.

A URL may carry a token (a signed URL's query): what is kept beyond the job's own
row — the audit event, the job's log and reasons, the version's note and
provenance — names it by :func:`shown_url`, without query, fragment or userinfo,
and the row itself keeps the whole URL only until the job ends (the worker
needs it to download; ``jobs.shown_source``).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit, urlunsplit

from django.conf import settings

from baas_site.exceptions import DomainError
from catalogue.interface import image_room, version_store_stream
from catalogue.models import Version
from imports.exceptions import ImportInvalid, ImportRefused, ImportStopped, ImportTooLarge
from imports.models import ImportJob
from imports.services.network import check_host

if TYPE_CHECKING:
    from imports.services.progress import Progress

CHUNK = 1 << 20
MAX_REDIRECTS = 5


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an http(s) URL; ImportInvalid otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImportInvalid("'url' must be an http:// or https:// URL with a host.", "url")
    if parts.username or parts.password:
        raise ImportInvalid("Put no credentials in the URL: BAAS would have to store them.", "url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ImportInvalid(f"The URL's port is not a port: {exc}.", "url") from exc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def shown_url(url: str) -> str:
    """``url`` as it may be recorded: scheme, host, port and path; no query, fragment or
    userinfo (a signed URL's token, credentials)."""
    parts = urlsplit(url.strip())
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address already checked, with the certificate checked for the host name."""

    def __init__(self, address: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _open(url: str) -> http.client.HTTPResponse:
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, path = parse_url(url)
        address = check_host(host, port)[0]
        timeout = settings.BAAS_IMPORT_READ_TIMEOUT
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = _PinnedHTTPS(address, host, port, timeout)
        else:
            conn = http.client.HTTPConnection(address, port, timeout=timeout)
        try:
            conn.request(
                "GET",
                path,
                headers={"Host": _host_header(host, port, scheme), "User-Agent": "BAAS-import"},
            )
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise ImportRefused(
                f"{shown_url(url)} cannot be fetched: {exc}. Nothing was stored."
            ) from exc
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            url = urljoin(url, response.getheader("Location", ""))
            conn.close()
            continue
        if response.status != 200:
            conn.close()
            raise ImportRefused(
                f"{shown_url(url)} answered {response.status} {response.reason}. "
                "Nothing was stored."
            )
        return response
    raise ImportRefused(
        f"{shown_url(url)} redirects more than {MAX_REDIRECTS} times. Nothing was stored."
    )


def _host_header(host: str, port: int, scheme: str) -> str:
    default = 443 if scheme == "https" else 80
    name = f"[{host}]" if ":" in host else host
    return name if port == default else f"{name}:{port}"


def url_import(*, job: ImportJob, progress: Progress) -> Version:
    limit, why = image_room(job.image)
    shown = shown_url(job.source)
    progress.log(f"Fetching {shown}.")
    response = _open(job.source)
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > limit:
        response.close()
        raise ImportTooLarge(
            f"{shown} is {length} bytes, more than {limit} ({why}). Nothing was stored."
        )
    try:
        # Not in a transaction: the job's progress must be visible while the bytes stream.
        version = version_store_stream(
            actor=job.created_by,
            image=job.image,
            chunks=_chunks(response, progress, limit, why),
            expected_sha256=job.sha256,
            note=f"Imported from {shown}"[:500],
        )
        Version.objects.filter(pk=version.pk).update(source_url=shown, source_sha256=job.sha256)
    except DomainError as exc:
        if "SHA-256 mismatch" in str(exc):
            raise ImportRefused(
                f"The file at {shown} does not have the SHA-256 given ({job.sha256}). "
                "Nothing was stored."
            ) from exc
        raise
    finally:
        response.close()
    version.refresh_from_db()
    return version


def _chunks(
    response: http.client.HTTPResponse, progress: Progress, limit: int, why: str
) -> Iterator[bytes]:
    done, last = 0, 0.0
    while True:
        reason = progress.stop_reason()
        if reason is not None:
            raise ImportStopped(reason)
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise ImportRefused(f"The download broke off: {exc}. Nothing was stored.") from exc
        if not chunk:
            return
        done += len(chunk)
        if done > limit:
            raise ImportTooLarge(
                f"The download passed {limit} bytes ({why}) and was stopped; nothing was stored."
            )
        if time.monotonic() - last > 1.0:
            last = time.monotonic()
            progress.progress(bytes_done=done)
        yield chunk
