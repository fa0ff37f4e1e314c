"""A tiny HTTP client for the agent protocol, on ``http.client`` only.

Contracts:

- Every call carries ``Authorization: Bearer <token>`` — but only to the
  server's own origin, so an absolute URL elsewhere never sees the token.
- 5xx answers, 409, 429 and connection errors are retried with exponential
  back-off (``retries`` times); any other 4xx is final. Both end in
  :class:`ApiError` with the server's message.
- :meth:`Client.upload` streams a request body made by a factory (called again
  for each attempt), chunked when its length is unknown.
- :meth:`Client.download` streams a body and resumes a broken transfer with
  ``Range: bytes=<received>-`` and ``If-Range: <ETag>``, checking the 206
  ``Content-Range``: the bytes it yields are exactly the file's, once.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlsplit

from baas_agent import __version__
from diskimage import CHUNK

USER_AGENT = f"baas-agent/{__version__}"
RETRYABLE_STATUSES = frozenset({409, 429})
NETWORK_ERRORS = (OSError, http.client.HTTPException)
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Error answers that are not JSON are summarised (error_message), never passed on whole.
MESSAGE_LIMIT = 300
_HIDDEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]*>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

log = logging.getLogger(__name__)
TYPE_CHECKING = False  # typing is not imported at start-up (its own ~2 ms)
if TYPE_CHECKING:
    from typing import IO, Any, TypeVar

    T = TypeVar("T")
    Body = Iterable[bytes] | IO[bytes]


class ApiError(Exception):
    """A call failed for good: a final 4xx answer, or retries exhausted."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeploymentOver(ApiError):
    """The server no longer takes this agent's calls: its deployment was cancelled or ended
    (410), or its token is dead (401: revoked, or another attempt began). The agent stops at
    once: it writes nothing more and reports nothing (nobody would accept it)."""


class DownloadError(ApiError):
    """A download cannot continue: the file changed, or the server broke the protocol."""


class TransientError(Exception):
    """A failure worth retrying (5xx, 409, 429, a broken connection)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _BodyError(Exception):
    """The request body's own source failed (not the network): never retried."""


def error_message(payload: bytes, *, url: str = "", content_type: str | None = None) -> str:
    """The human message of an error answer, one plain line of at most ~300 characters.

    JSON: its ``detail``/``message``/``error``/``reason``. Anything else (an
    HTML error page, a proxy's text) is never passed on as it is: it becomes
    "not JSON (<type>) from <url without query>: <its first words>", with tags,
    scripts and styles removed.
    """
    try:
        data = json.loads(payload)
    except ValueError:
        return _summary(payload, url, content_type)
    if isinstance(data, dict):
        for key in ("detail", "message", "error", "reason"):
            if key in data:
                return _one_line(str(data[key]))
    return _one_line(json.dumps(data))


def _summary(payload: bytes, url: str, content_type: str | None) -> str:
    kind = (content_type or "no type").split(";")[0].strip() or "no type"
    parts = urlsplit(url)
    where = f" from {parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else ""
    text = _TAGS.sub(" ", _HIDDEN.sub(" ", payload[:65536].decode("utf-8", "replace")))
    import html  # error answers only: not at start-up

    words = _one_line(html.unescape(text), MESSAGE_LIMIT // 2) or "(empty answer)"
    return f"not JSON ({kind}){where}: {words}"


def _one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` on one line (control characters dropped), cut to ``limit`` with "…"."""
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def check_status(
    status: int, payload: bytes, *, url: str = "", content_type: str | None = None
) -> None:
    """Raise TransientError, DeploymentOver or ApiError unless ``status`` is a success."""
    if status < 300:
        return
    message = f"HTTP {status}: {error_message(payload, url=url, content_type=content_type)}"
    if status in (401, 410):
        raise DeploymentOver(message, status)
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise TransientError(message, status)
    raise ApiError(message, status)


class _Transfer:
    """What a download knows about its file so far.

    A plain class: ``dataclasses`` (and the ``inspect`` it imports) would weigh on the
    agent's start-up before its first call, which this module is imported for.
    """

    def __init__(self, *, total: int | None = None, info: dict[str, str] | None = None):
        self.received = 0
        self.total = total
        self.first: int | None = None  # a byte range of the file was asked for: where it starts
        self.etag: str | None = None  # strong ETags only: If-Range forbids weak ones
        self.last_modified: str | None = None
        self.info = info  # the caller's, to learn the first answer's headers

    def validator(self) -> str | None:
        return self.etag or self.last_modified

    def complete(self) -> bool:
        return self.total is None or self.received == self.total


class Client:
    """Talks to one BAAS server. Not thread-safe; cheap to create."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the server URL must be http(s)://host[:port], not {server!r}")
        self.base = server.rstrip("/")
        self.origin = (parts.scheme, parts.netloc)
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep

    # -- plumbing ---------------------------------------------------------

    def url(self, path: str) -> str:
        """``path`` relative to the server URL; absolute URLs are kept."""
        if urlsplit(path).scheme:
            return path
        if not path.startswith("/"):
            raise ValueError(f"a server path must start with '/': {path!r}")
        return self.base + path

    def _connection(self, url: str) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        parts = urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.netloc, timeout=self.timeout, blocksize=CHUNK)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"User-Agent": USER_AGENT, "Connection": "close"}
        if self.token and (parts.scheme, parts.netloc) == self.origin:
            headers["Authorization"] = f"Bearer {self.token}"
        return conn, target, headers

    def _retrying(self, what: str, attempt: Callable[[], T], retries: int | None = None) -> T:
        retries = self.retries if retries is None else retries
        for n in range(retries + 1):
            try:
                return attempt()
            except TransientError as exc:
                if n == retries:
                    raise ApiError(
                        f"{what}: {exc} (gave up after {n + 1} attempts)", exc.status
                    ) from exc
                delay = min(self.backoff * 2**n, self.max_backoff)
                log.warning("%s: %s; retrying in %.1f s", what, exc, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _exchange(
        self, method: str, url: str, body: Body | bytes | None, headers: dict[str, str]
    ) -> Any:
        """One request, its whole (small) answer parsed as JSON. Raises per check_status."""
        return self._receive(url, *self._send(method, url, body, headers))

    def _send(
        self, method: str, url: str, body: Body | bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse | None]:
        """Send a request: its open connection, and its answer if the server sent one early."""
        conn, target, base = self._connection(url)
        try:
            try:
                conn.request(method, target, body=body, headers={**base, **headers})
            except NETWORK_ERRORS as exc:
                # The server may have answered early (401, 413) and closed: read that.
                return conn, self._early_response(conn, exc)
            return conn, None
        except NETWORK_ERRORS as exc:
            conn.close()
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        except _BodyError as exc:
            conn.close()
            raise exc.__cause__ from None  # type: ignore[misc]
        except BaseException:
            conn.close()
            raise

    def _receive(
        self, url: str, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse | None
    ) -> Any:
        """The answer of a request :meth:`_send` sent, parsed as JSON; the connection closed."""
        try:
            try:
                if resp is None:
                    resp = conn.getresponse()
                payload = resp.read()
            except NETWORK_ERRORS as exc:
                raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()
        check_status(resp.status, payload, url=url, content_type=resp.getheader("Content-Type"))
        return json.loads(payload) if payload.strip() else None

    @staticmethod
    def _early_response(
        conn: http.client.HTTPConnection, exc: BaseException
    ) -> http.client.HTTPResponse:
        if conn.sock is None:  # never connected: nothing to read
            raise exc
        try:
            return conn.getresponse()
        except NETWORK_ERRORS:
            raise exc from None

    # -- JSON calls -------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, *, retries: int | None = None) -> Any:
        """A JSON request with retries; returns the parsed answer (None when empty)."""
        return self.call_begun(method, path, body, retries=retries)()

    def call_begun(
        self, method: str, path: str, body: Any = None, *, retries: int | None = None
    ) -> Callable[[], Any]:
        """:meth:`call`, its request sent now: the returned function reads the answer.

        What the caller does in between (the agent imports what it needs next) overlaps
        the server's work on the request. Retries start over from the request, as
        :meth:`call`'s do.
        """
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = self.url(path)
        sent: tuple[http.client.HTTPConnection, http.client.HTTPResponse | None] | None = None
        failure: TransientError | None = None
        try:
            sent = self._send(method, url, data, headers)
        except TransientError as exc:
            failure = exc

        def attempt() -> Any:  # the first reads what was sent; retries send again
            nonlocal sent, failure
            first_failure, first_sent = failure, sent
            failure = sent = None
            if first_failure is not None:
                raise first_failure
            if first_sent is not None:
                return self._receive(url, *first_sent)
            return self._exchange(method, url, data, headers)

        return lambda: self._retrying(f"{method} {path}", attempt, retries)

    def get_json(self, path: str) -> Any:
        return self.call("GET", path)

    def post_json(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    # -- streaming --------------------------------------------------------

    def upload(
        self,
        path: str,
        body: Callable[[], Body],
        *,
        headers: dict[str, str],
        length: int | None = None,
        method: str = "POST",
    ) -> Any:
        """Stream ``body()`` as the request body; returns the JSON answer.

        ``body`` is a factory: each attempt gets a fresh stream. Without
        ``length`` the body goes chunked (``Transfer-Encoding: chunked``).
        An exception from the body's own source is raised as is, never retried.
        """
        url = self.url(path)
        sent = {"Accept": "application/json", **headers}
        if length is not None:
            sent["Content-Length"] = str(length)

        def attempt() -> Any:
            return self._exchange(method, url, _guarded(body()), sent)

        return self._retrying(f"{method} {path}", attempt)

    def download(
        self,
        path: str,
        *,
        expected_size: int | None = None,
        chunk_size: int = CHUNK,
        info: dict[str, str] | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> Iterator[bytes]:
        """Yield the body of ``GET path``, resuming broken transfers.

        ``byte_range`` = ``(offset, length)`` asks for those bytes of the file
        alone (``Range: bytes=a-b``); a server that answers anything but them
        (a 200 with the whole file) raises DownloadError.

        A broken connection (reset, timeout, early close) resumes at the bytes
        received so far with ``Range``/``If-Range``; each resume that makes no
        progress counts against ``retries``. Raises DownloadError if the file
        changed meanwhile, if the size differs from ``expected_size``, or if a
        206 answer does not start where asked. ``info``, when given, receives
        the first answer's ``content-type`` before the first bytes are yielded.
        """
        url = self.url(path)
        transfer = _Transfer(total=expected_size, info=info)
        if byte_range is not None:
            transfer.first, transfer.total = byte_range
        failures = 0
        while True:
            try:
                for chunk in self._download_part(url, transfer, chunk_size):
                    failures = 0
                    yield chunk
                if not transfer.complete():
                    raise TransientError(
                        f"connection closed at {transfer.received} of {transfer.total} bytes"
                    )
                return
            except (TransientError, *NETWORK_ERRORS) as exc:
                failures += 1
                if failures > self.retries:
                    raise DownloadError(f"GET {path}: {exc} (gave up)") from exc
                delay = min(self.backoff * 2 ** (failures - 1), self.max_backoff)
                log.warning(
                    "GET %s broken at byte %d (%s); resuming in %.1f s",
                    path,
                    transfer.received,
                    exc,
                    delay,
                )
                self.sleep(delay)

    def _download_part(self, url: str, transfer: _Transfer, chunk_size: int) -> Iterator[bytes]:
        conn, target, headers = self._connection(url)
        if transfer.first is not None and transfer.total is not None:
            start = transfer.first + transfer.received
            headers["Range"] = f"bytes={start}-{transfer.first + transfer.total - 1}"
        elif transfer.received:
            headers["Range"] = f"bytes={transfer.received}-"
        if transfer.received and transfer.validator():
            headers["If-Range"] = transfer.validator() or ""
        try:
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            if resp.status not in (200, 206):
                check_status(
                    resp.status,
                    resp.read(),
                    url=url,
                    content_type=resp.getheader("Content-Type"),
                )
                raise DownloadError(f"GET {url}: unexpected HTTP {resp.status}", resp.status)
            skip = self._accept(resp, transfer)
            yield from _body(resp, transfer, chunk_size, skip)
        finally:
            conn.close()

    @staticmethod
    def _accept(resp: http.client.HTTPResponse, transfer: _Transfer) -> int:
        """Check an answer against what was received; returns bytes to skip."""
        if resp.status == 206:
            _check_content_range(resp.getheader("Content-Range"), transfer)
            if transfer.received == 0:
                etag = resp.getheader("ETag")
                transfer.etag = None if etag is None or etag.startswith("W/") else etag
                transfer.last_modified = resp.getheader("Last-Modified")
                if transfer.info is not None:
                    transfer.info["content-type"] = resp.getheader("Content-Type") or ""
            return 0
        if transfer.first is not None:
            raise DownloadError(f"asked for bytes from {transfer.first}, got the whole file")
        if resp.length is None and not resp.chunked and transfer.total is None:
            # Only a closed connection would end this body: truncation could not be told.
            raise TransientError("an answer without Content-Length (headers cut short?)")
        length = resp.getheader("Content-Length")
        size = int(length) if length is not None else None
        etag = resp.getheader("ETag")
        etag = None if etag is None or etag.startswith("W/") else etag
        if transfer.received == 0:
            if transfer.total is not None and size is not None and size != transfer.total:
                raise DownloadError(f"the server sends {size} bytes, {transfer.total} expected")
            transfer.total = size if size is not None else transfer.total
            transfer.etag = etag
            transfer.last_modified = resp.getheader("Last-Modified")
            if transfer.info is not None:
                transfer.info["content-type"] = resp.getheader("Content-Type") or ""
            return 0
        # A 200 to a Range request: ranges unsupported, or If-Range saw a new file.
        if (etag, resp.getheader("Last-Modified")) != (transfer.etag, transfer.last_modified):
            raise DownloadError("the file changed on the server during the download")
        return transfer.received


def _check_content_range(header: str | None, transfer: _Transfer) -> None:
    match = CONTENT_RANGE.fullmatch((header or "").strip())
    if not match:
        raise DownloadError(f"a 206 answer with a bad Content-Range: {header!r}")
    start, total = int(match[1]), match[3]
    wanted = (transfer.first or 0) + transfer.received
    if start != wanted:
        raise DownloadError(f"asked for the bytes from {wanted}, got {header}")
    if transfer.first is not None:
        if int(match[2]) != transfer.first + (transfer.total or 0) - 1:
            raise DownloadError(
                f"asked for bytes up to {transfer.first + (transfer.total or 0) - 1}, got {header}"
            )
        return
    if total != "*" and transfer.total is not None and int(total) != transfer.total:
        raise DownloadError(f"the file's size changed: {header}, {transfer.total} expected")


def _body(
    resp: http.client.HTTPResponse, transfer: _Transfer, chunk_size: int, skip: int
) -> Iterator[bytes]:
    while skip:
        dropped = len(resp.read(min(skip, chunk_size)))
        if not dropped:
            return
        skip -= dropped
    while chunk := resp.read(chunk_size):
        transfer.received += len(chunk)
        if transfer.total is not None and transfer.received > transfer.total:
            raise DownloadError(f"the server sent more than the {transfer.total} bytes announced")
        yield chunk


def _guarded(body: Body) -> Body:
    """Tag exceptions raised by the body's own source so they are not retried."""
    if not isinstance(body, Iterable) or hasattr(body, "read"):
        return body
    return _guarded_iter(body)


def _guarded_iter(body: Iterable[bytes]) -> Iterator[bytes]:
    try:
        yield from body
    except Exception as exc:
        raise _BodyError() from exc
