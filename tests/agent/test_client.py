"""The agent's HTTP client against real servers: nginx for ranges, stubs for errors."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from baas_agent.client import ApiError, Client, DownloadError

from tests.agent.conftest import MiB
from tests.agent.servers import QuietServer, _dechunk


@pytest.fixture
def served(nginx):
    """A 6 MiB file served by nginx at /image.raw."""
    data = os.urandom(6 * MiB + 123)
    (nginx.root / "image.raw").write_bytes(data)
    return data


def fast_client(url: str, **kwargs) -> Client:
    sleeps: list[float] = []
    client = Client(
        url, "secret", timeout=kwargs.pop("timeout", 5.0), sleep=sleeps.append, **kwargs
    )
    client.sleeps = sleeps  # type: ignore[attr-defined]
    return client


def test_a_download_streams_the_whole_file(nginx, served):
    chunks = list(fast_client(nginx.url).download("/image.raw"))
    assert b"".join(chunks) == served
    assert max(len(chunk) for chunk in chunks) <= MiB


def test_a_download_cut_mid_transfer_resumes_with_range_and_if_range(nginx, served, proxy_factory):
    proxy = proxy_factory(nginx.port, after=MiB + 5000, cuts=2)
    client = fast_client(proxy.url)
    assert b"".join(client.download("/image.raw", expected_size=len(served))) == served
    log = [line.split(" ") for line in nginx.access_log()]
    assert [entry[1] for entry in log] == ["200", "206", "206"]
    first, second = (entry[2] for entry in log[1:])
    assert first.startswith('"bytes=') and first != second  # each resume starts further on
    etag = log[1][3]
    assert etag.startswith('"\\x22') and etag == log[2][3]  # If-Range: nginx's strong ETag
    assert len(client.sleeps) == 2


def test_a_stalled_download_times_out_and_resumes(nginx, served, proxy_factory):
    proxy = proxy_factory(nginx.port, after=2 * MiB, mode="stall")
    client = fast_client(proxy.url, timeout=0.5)
    assert b"".join(client.download("/image.raw")) == served
    assert [line.split(" ")[1] for line in nginx.access_log()][-1] == "206"


def test_a_file_changed_during_the_download_is_not_spliced(nginx, served, proxy_factory):
    proxy = proxy_factory(nginx.port, after=2 * MiB)
    stream = fast_client(proxy.url).download("/image.raw")
    next(stream)
    path = nginx.root / "image.raw"
    path.write_bytes(os.urandom(len(served)))
    os.utime(path, (1, 1))  # a new ETag
    with pytest.raises(DownloadError, match="changed"):
        list(stream)


def test_a_download_gives_up_after_its_retries(nginx, served, proxy_factory):
    proxy = proxy_factory(nginx.port, after=100, cuts=100)
    client = fast_client(proxy.url, retries=2)
    with pytest.raises(DownloadError, match="gave up"):
        list(client.download("/image.raw"))
    assert len(client.sleeps) == 2


def test_a_download_of_the_wrong_size_is_refused(nginx, served):
    with pytest.raises(DownloadError, match="expected"):
        list(fast_client(nginx.url).download("/image.raw", expected_size=len(served) + 1))


def test_a_missing_file_is_a_final_error(nginx):
    client = fast_client(nginx.url)
    with pytest.raises(ApiError) as caught:
        list(client.download("/nothing"))
    assert caught.value.status == 404
    assert client.sleeps == []


# -- a scripted stub for JSON calls and uploads ------------------------------------


class Stub:
    """Answers each request with the next scripted ``(status, body)``; records requests."""

    def __init__(self, answers: list[tuple[int, object]]) -> None:
        self.answers = answers
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                if self.headers.get("Transfer-Encoding") == "chunked":
                    body = _dechunk(self.rfile)
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append({"path": self.path, "headers": self.headers, "body": body})
                status, answer = stub.answers.pop(0)
                raw = isinstance(answer, bytes)  # a page, as proxies and debug servers send
                data = answer if raw else json.dumps(answer).encode()
                self.send_response(status)
                if raw:
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator:
    stubs: list[Stub] = []

    def make(*answers: tuple[int, object]) -> Stub:
        stubs.append(Stub(list(answers)))
        return stubs[-1]

    yield make
    for server in stubs:
        server.close()


def test_server_errors_and_conflicts_are_retried_with_back_off(stub):
    server = stub((503, {}), (502, {}), (409, {"detail": "busy"}), (200, {"ok": True}))
    client = fast_client(server.url, backoff=0.5)
    assert client.post_json("/api/agent/progress", {"a": 1}) == {"ok": True}
    assert client.sleeps == [0.5, 1.0, 2.0]
    assert [json.loads(r["body"]) for r in server.requests] == [{"a": 1}] * 4
    assert server.requests[0]["headers"]["Authorization"] == "Bearer secret"


def test_a_call_begun_is_sent_at_once_and_read_later_with_the_same_retries(stub):
    server = stub((200, {"first": True}), (503, {}), (200, {"again": True}))
    client = fast_client(server.url, backoff=0.5)
    answer = client.call_begun("POST", "/api/agent/checkin", {"mac": "m"})
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(server.requests) == 1, "the request waited for its answer to be asked"
    assert answer() == {"first": True}
    retried = client.call_begun("POST", "/api/agent/checkin", {"mac": "m"})
    assert retried() == {"again": True} and client.sleeps == [0.5]
    assert [json.loads(r["body"]) for r in server.requests] == [{"mac": "m"}] * 3


def test_other_client_errors_are_final_and_carry_the_servers_message(stub):
    server = stub((403, {"detail": "Not your deployment."}))
    client = fast_client(server.url)
    with pytest.raises(ApiError, match=r"HTTP 403: Not your deployment\.") as caught:
        client.get_json("/api/agent/instructions")
    assert caught.value.status == 403
    assert client.sleeps == []


def test_retries_end_in_a_clear_error(stub):
    server = stub(*[(500, {"detail": "boom"})] * 3)
    with pytest.raises(ApiError, match=r"boom.*gave up after 3 attempts"):
        fast_client(server.url, retries=2).get_json("/x")


def test_a_connection_refused_is_retried_then_fails(stub):
    server = stub()
    url = server.url
    server.close()
    client = fast_client(url, retries=1)
    with pytest.raises(ApiError, match="gave up after 2 attempts"):
        client.get_json("/x")


def test_the_token_goes_only_to_the_servers_own_origin(stub):
    server = stub((200, {}), (200, {}))
    fast_client(server.url).get_json("/mine")
    fast_client("http://127.0.0.1:9").get_json(f"{server.url}/elsewhere")
    mine, elsewhere = server.requests
    assert mine["headers"]["Authorization"] == "Bearer secret"
    assert "Authorization" not in elsewhere["headers"]


def test_an_upload_streams_a_generator_chunked_and_retries_with_a_fresh_body(stub):
    server = stub((503, {}), (201, {"version": 4}))
    parts = [os.urandom(MiB), os.urandom(1000), os.urandom(MiB)]
    made = []

    def body():
        made.append(1)
        yield from parts

    client = fast_client(server.url)
    answer = client.upload("/api/image/x", body, headers={"Content-Encoding": "zstd"})
    assert answer == {"version": 4}
    assert len(made) == 2
    for request in server.requests:
        assert request["body"] == b"".join(parts)
        assert request["headers"]["Transfer-Encoding"] == "chunked"
        assert request["headers"]["Content-Encoding"] == "zstd"


def test_an_upload_of_known_length_sends_content_length(stub, tmp_path):
    server = stub((201, {"version": 1}))
    path = tmp_path / "body"
    path.write_bytes(os.urandom(3 * MiB))
    with path.open("rb") as file:
        fast_client(server.url).upload("/u", lambda: file, headers={}, length=3 * MiB)
    assert server.requests[0]["body"] == path.read_bytes()
    assert server.requests[0]["headers"]["Content-Length"] == str(3 * MiB)


def test_a_failing_upload_source_is_not_retried(stub):
    server = stub((201, {}), (201, {}))

    def body():
        yield b"x" * 1000
        raise OSError("read error on /dev/sdb")

    client = fast_client(server.url)
    with pytest.raises(OSError, match="read error on /dev/sdb"):
        client.upload("/u", body, headers={})
    assert client.sleeps == []


DEBUG_PAGE = (
    b"""<!DOCTYPE html>
<html lang="en"><head><title>KeyError at /api/image/0f3c/1</title>
<style>html * { padding: 0; margin: 0; }</style>
<script>function hideAll(elems) { for (var e = 0; e < elems.length; e++) {} }</script>
</head><body><div id="summary"><h1>KeyError at /api/image/0f3c/1</h1>
<pre class="exception_value">&#x27;mount&#x27;</pre>
<table class="meta"><tr><th>Request Method:</th><td>GET</td></tr></table></div>
<div id="traceback">"""
    + b"<p>frame</p>" * 5000
    + b"""</div></body></html>"""
)


def test_an_html_error_page_becomes_one_plain_line_naming_status_and_url(stub):
    server = stub((404, DEBUG_PAGE))
    with pytest.raises(ApiError) as caught:
        fast_client(server.url).get_json("/api/image/0f3c/1?token=abc")
    message = str(caught.value)
    where = f"{server.url}/api/image/0f3c/1"
    assert message.startswith(f"HTTP 404: not JSON (text/html) from {where}: ")
    assert "KeyError at /api/image/0f3c/1 'mount'" in message
    assert "<" not in message and "\n" not in message and "hideAll" not in message
    assert "token=abc" not in message
    assert len(message) < 300


def test_a_server_error_page_is_summarised_too_after_the_retries(stub):
    server = stub((500, DEBUG_PAGE), (500, DEBUG_PAGE))
    with pytest.raises(ApiError) as caught:
        fast_client(server.url, retries=1).post_json("/api/agent/progress", {})
    message = str(caught.value)
    assert "HTTP 500: not JSON (text/html)" in message and "gave up after 2 attempts" in message
    assert "<" not in message and len(message) < 400
