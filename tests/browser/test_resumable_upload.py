"""The dashboard's upload resumes by itself after the connection is cut mid-body.

The browser talks to the live server through a TCP proxy in this test that cuts the
first connection carrying a PATCH to an upload once it has forwarded part of the body,
and records every append's ``Upload-Offset``: the test fails unless the page went on
from where the server stopped (an append at an offset past 0) and the version is the
file byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from catalogue.models import ResumableUpload, Version
from catalogue.storage import get_storage
from tests.accounts.factories import PASSWORD, UserFactory
from tests.browser.conftest import sign_in
from tests.catalogue.factories import ImageFactory

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1 << 20
STALL = 2.0  # seconds the proxy holds a PATCH before it cuts it
OFFSET = re.compile(rb"\r\nUpload-Offset: (\d+)\r\n", re.IGNORECASE)


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to the live server; cuts the first PATCH after ``cut_after``
    bytes of it went through."""

    def __init__(self, upstream: tuple[str, int], cut_after: int):
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts = 0
        self.patch_offsets: list[int] = []
        self.log: list[str] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        seen = b""
        in_patch = 0  # bytes forwarded since a PATCH began on this connection
        try:
            while data := client.recv(65536):
                seen = (seen + data)[-65536:]
                for line in re.findall(rb"(?:PATCH|HEAD|POST|DELETE) /api/[^ ]* HTTP/1.1", data):
                    self.log.append(line.decode())
                if b"PATCH /api/uploads/" in data:
                    head = data[data.index(b"PATCH /api/uploads/") :]
                    if match := OFFSET.search(head):
                        with self._lock:
                            self.patch_offsets.append(int(match[1]))
                    in_patch = 1
                if in_patch:
                    in_patch += len(data)
                    with self._lock:
                        cut = self.cuts == 0 and in_patch > self.cut_after
                        if cut:
                            self.cuts += 1
                    if cut:
                        # A cut after a stall, as a dropped link does: the server's request has
                        # begun and holds what went through. (Cut at once, Chromium may resend
                        # the PATCH from 0 on a new connection before the server's first request
                        # even starts, and nothing would be left to resume.)
                        time.sleep(STALL)
                        self._cut(client, upstream)
                        return
                upstream.sendall(data)
        except OSError:
            pass
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    @staticmethod
    def _cut(client: socket.socket, upstream: socket.socket) -> None:
        """The browser's connection resets; the server sees its request body end early
        (what it read so far is what it has: a reset would also drop its unread buffer)."""
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    @staticmethod
    def _pump_down(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(live_server):
    address = urlsplit(live_server.url)
    proxy = CuttingProxy((address.hostname, address.port), cut_after=3 * MiB)
    yield proxy
    proxy.close()


@pytest.fixture
def proxied_page(browser, proxy):
    context = browser.new_context(base_url=f"http://127.0.0.1:{proxy.port}")
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    context.close()


def test_an_upload_cut_mid_body_resumes_by_itself_and_shows_rate_and_time_left(
    proxied_page, proxy, tmp_path
):
    page = proxied_page
    person = UserFactory(username="grace")
    image = ImageFactory(owner=person, name="resumed")
    Version.objects.create(image=image, number=0, size=0, sha256="0" * 64, stored_size=0)
    content = os.urandom(6 * MiB) + bytes(2 * MiB) + os.urandom(4096)
    path = tmp_path / "disk.img"
    path.write_bytes(content)

    sign_in(page, person.username, PASSWORD)
    page.goto(f"/images/{image.pk}/")
    page.get_by_label("Image file").set_input_files(str(path))
    page.get_by_role("button", name="Upload", exact=True).click()

    uploaded = page.get_by_role("status").filter(has_text="Version 1 uploaded")
    expect(uploaded).to_be_visible(timeout=60_000)  # after a retry or two, 1 s then 2 s apart
    expect(page.locator("#upload-rate")).to_contain_text("/s")
    assert proxy.cuts == 1  # the connection was cut mid-body
    resumed = [offset for offset in proxy.patch_offsets if offset > 0]
    # ...and the page went on from the server's offset
    assert resumed, (proxy.patch_offsets, proxy.log)
    assert 0 < resumed[0] < len(content)
    version = Version.objects.get(image=image, number=1)
    assert version.sha256 == hashlib.sha256(content).hexdigest()
    assert get_storage().version_path(image.uuid, 1, "none").read_bytes() == content
    assert ResumableUpload.objects.get().state == "complete"


def test_the_rate_and_time_left_show_while_uploading(page, live_server, tmp_path):
    person = UserFactory(username="ida")
    image = ImageFactory(owner=person, name="slow")
    Version.objects.create(image=image, number=0, size=0, sha256="0" * 64, stored_size=0)
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(24 * MiB))
    sign_in(page, person.username, PASSWORD)
    page.goto(f"/images/{image.pk}/")
    # Throttle the page's network so that the upload takes a few seconds.
    session = page.context.new_cdp_session(page)
    session.send("Network.enable")
    session.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 8 * MiB},
    )
    page.get_by_label("Image file").set_input_files(str(path))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.locator("#upload-rate")).to_contain_text(re.compile(r"/s, .* left"))
    uploaded = page.get_by_role("status").filter(has_text="Version 1 uploaded")
    expect(uploaded).to_be_visible(timeout=60_000)
