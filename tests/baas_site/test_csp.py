"""The Content-Security-Policy header: scripts and styles only from BAAS's own files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


def directives(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    parts = (part.split() for part in header.split(";") if part.strip())
    return {name: values for name, *values in parts}


@pytest.mark.parametrize("route", ["/", "/images/", "/tokens/", "/api/docs/", "/accounts/login/"])
def test_every_page_forbids_inline_script_eval_and_framing(signed_in, route):
    response = signed_in.get(route)
    assert response.status_code == 200
    policy = directives(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'self'"]
    assert policy["form-action"] == ["'self'"]


def test_api_answers_carry_the_policy_too(user_client):
    response = user_client.get("/api/user/me")
    assert directives(response)["script-src"] == ["'self'"]


def test_no_template_holds_inline_script_or_style():
    """json_script's data blocks are not scripts; everything else comes from static/."""
    inline_script = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
    handler = re.compile(r"\son[a-z]+\s*=", re.I)
    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text()
        assert not inline_script.search(text), template
        assert not handler.search(text), template
        assert "style=" not in text and "<style" not in text, template
