"""Every operation names its client errors, and callers get the ones it names."""

from __future__ import annotations

import re
import uuid

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

SAMPLE = {"mac": "52:54:00:00:00:99", "username": "nobody-here", "number": "7"}


def operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


@pytest.fixture
def schema(user_client):
    return user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()


def test_every_operation_documents_its_client_errors(schema):
    for path, method, operation in operations(schema):
        codes = set(operation["responses"])
        assert any(code.startswith("4") for code in codes), (method, path)
        if any(operation.get("security", [])):
            assert {"401", "403"} <= codes, (method, path)
        if "{" in path:
            assert "404" in codes, (method, path)
        if "requestBody" in operation:
            assert "400" in codes, (method, path)
        for code in (c for c in codes if c.startswith("4")):
            assert operation["responses"][code]["description"], (method, path, code)


def _filled(path: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name in SAMPLE:
            return SAMPLE[name]
        return "1" if name.endswith("_id") and "image" not in name else str(uuid.uuid4())

    return re.sub(r"\{(\w+)\}", value, path)


def test_an_anonymous_caller_gets_a_status_the_operation_documents(schema):
    anonymous = APIClient()
    for path, method, operation in operations(schema):
        if not any(operation.get("security", [])) or method not in ("get", "delete", "post"):
            continue
        response = getattr(anonymous, method)(_filled(path), HTTP_ACCEPT="application/json")
        assert str(response.status_code) in operation["responses"], (method, path, response)
        assert response["Content-Type"].startswith("application/json"), (method, path)


def test_someone_elses_or_a_missing_thing_answers_a_documented_404(schema, user_client):
    for path, method, operation in operations(schema):
        if method != "get" or "{" not in path or path.startswith("/api/boot/"):
            continue
        if "username" in path:
            continue  # a username that does not exist is a 404 too, checked below
        response = user_client.get(_filled(path), HTTP_ACCEPT="application/json")
        assert response.status_code in (404, 400), (path, response.content)
        assert str(response.status_code) in operation["responses"], (path, response)
    response = user_client.get("/api/user/nobody-here/images")
    assert (
        response.status_code == 404
        and "404" in schema["paths"]["/api/user/{username}/images"]["get"]["responses"]
    )
