"""Logs a shipper can read, and error reports to a Sentry-speaking service."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.celery_worker import ROOT

RAISE_AND_LOG = """
import logging
try:
    raise ValueError("the disk went away")
except ValueError:
    logging.getLogger("baas.test").error("copying %s failed", "v3", exc_info=True)
"""


def manage_shell(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": "sqlite://:memory:", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_json_logs_are_one_object_per_line_with_the_traceback():
    result = manage_shell(RAISE_AND_LOG, LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (record,) = [r for r in records if r["logger"] == "baas.test"]
    assert (record["level"], record["message"]) == ("ERROR", "copying v3 failed")
    assert "ValueError: the disk went away" in record["exc_info"]
    assert record["time"]


def test_text_logs_stay_for_people():
    result = manage_shell(RAISE_AND_LOG)
    assert result.returncode == 0, result.stderr
    assert "ERROR baas.test: copying v3 failed" in result.stderr
    assert not any(line.startswith("{") for line in result.stderr.splitlines())


def test_the_first_name_of_the_setting_is_still_read():
    result = manage_shell(RAISE_AND_LOG, BAAS_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("{") for line in result.stderr.splitlines())
    result = manage_shell(RAISE_AND_LOG, BAAS_LOG_FORMAT="json", LOG_FORMAT="text")
    assert not any(line.startswith("{") for line in result.stderr.splitlines())


def test_an_unknown_log_format_is_refused_in_plain_words():
    result = manage_shell("pass", LOG_FORMAT="xml")
    assert result.returncode != 0
    assert "LOG_FORMAT must be text or json, not 'xml'" in result.stderr


@pytest.fixture
def sentry_server():
    """A local stand-in for Sentry's ingestion endpoint: keeps every envelope sent."""
    envelopes: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            envelopes.append(body.decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://publickey@127.0.0.1:{server.server_address[1]}/1", envelopes
    server.shutdown()
    server.server_close()


def test_an_error_is_reported_when_a_dsn_is_set(sentry_server):
    dsn, envelopes = sentry_server
    code = RAISE_AND_LOG + "import sentry_sdk; sentry_sdk.flush(timeout=10)\n"
    result = manage_shell(code, SENTRY_DSN=dsn, SENTRY_ENVIRONMENT="lab-test")
    assert result.returncode == 0, result.stderr
    events = "\n".join(envelopes)
    assert "copying v3 failed" in events
    assert "the disk went away" in events
    assert '"environment":"lab-test"' in events.replace(" ", "")


def test_nothing_is_reported_without_a_dsn(sentry_server):
    _, envelopes = sentry_server
    result = manage_shell(RAISE_AND_LOG + "import sentry_sdk; sentry_sdk.flush(timeout=2)\n")
    assert result.returncode == 0, result.stderr
    assert envelopes == []
