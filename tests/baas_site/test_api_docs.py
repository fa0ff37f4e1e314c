"""Who may read /api/schema/ and /api/docs/: signed-in people and tokens in production."""

from __future__ import annotations

import pytest

from tests.baas_site.test_settings import bare_env, manage

pytestmark = pytest.mark.django_db


@pytest.fixture
def private_docs(settings):
    settings.BAAS_PUBLIC_API_DOCS = False


def test_in_production_an_anonymous_caller_gets_no_schema(private_docs, anon_client):
    response = anon_client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code in (401, 403)
    assert response.json()["detail"]  # a sentence, as every API error
    assert "paths" not in response.json()


def test_in_production_an_anonymous_person_is_sent_to_sign_in_for_the_docs(private_docs, client):
    response = client.get("/api/docs/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/api/docs/"
    assert client.get("/api/docs/?script=").status_code == 302  # nor its start-up script


def test_in_production_a_token_reads_the_schema(private_docs, user_client):
    response = user_client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert "/api/user/me" in response.json()["paths"]


def test_in_production_a_signed_in_person_reads_the_docs(private_docs, signed_in):
    page = signed_in.get("/api/docs/")
    assert page.status_code == 200
    assert b"swagger-ui" in page.content
    script = signed_in.get("/api/docs/?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"SwaggerUIBundle" in script.content


def test_public_docs_are_readable_by_anyone(settings, anon_client, client):
    settings.BAAS_PUBLIC_API_DOCS = True
    assert anon_client.get("/api/schema/", HTTP_ACCEPT="application/json").status_code == 200
    assert client.get("/api/docs/").status_code == 200


@pytest.mark.parametrize(
    ("env", "public"),
    [
        ({}, True),  # development: DEBUG on
        ({"DEBUG": "false", "SECRET_KEY": "x" * 50}, False),
        ({"DEBUG": "false", "SECRET_KEY": "x" * 50, "BAAS_PUBLIC_API_DOCS": "true"}, True),
    ],
)
def test_the_docs_are_public_by_default_only_in_development(env, public, tmp_path):
    result = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.BAAS_PUBLIC_API_DOCS)",
        env=bare_env(BAAS_VAR_DIR=str(tmp_path), **env),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(public)
