"""Failure reasons and event messages are plain text, whatever produced them."""

from __future__ import annotations

import pytest

from tests.flashing.test_cancel import machine, start  # noqa: F401 -- the fixture

pytestmark = pytest.mark.django_db

DEBUG_PAGE = """<!DOCTYPE html>
<html lang="en"><head><title>KeyError at /api/image/x/1/map</title>
<style>body { color: red }</style><script>alert(1)</script></head>
<body><h1>KeyError at /api/image/x/1/map</h1><pre>'mount'</pre></body></html>"""
TRACEBACK = """agent crashed
Traceback (most recent call last):
  File "/usr/lib/baas_agent/flash.py", line 12, in write_image
    raise KeyError('mount')
KeyError: 'mount'"""


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        (DEBUG_PAGE, "KeyError at /api/image/x/1/map 'mount'"),
        (TRACEBACK, "agent crashed KeyError: 'mount'"),
    ],
)
def test_a_failure_reason_is_kept_as_one_readable_line(user_client, user, machine, reason, shown):  # noqa: F811
    deployment, agent = start(user_client, machine, user)
    agent.post("/api/log", {"lines": [reason]}, format="json")

    answer = agent.post("/api/agent/result", {"state": "failed", "reason": reason}, format="json")

    assert answer.status_code == 200, answer.content
    page = user_client.get(f"/api/deployment/{deployment.pk}").json()
    assert page["failure_reason"] == shown
    messages = [e["message"] for e in page["events"]]
    assert shown in messages  # the agent's log line
    assert not any("<" in m or "Traceback" in m for m in messages)
