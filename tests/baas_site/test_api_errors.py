"""Under /api/ every failure answers JSON with a plain message, even with DEBUG on."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.baas_site.urls_failing")]


@pytest.fixture
def client() -> Client:
    # Answers as a browser or script would see them, not the exception itself.
    return Client(raise_request_exception=False)


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


def assert_plain_json_500(response) -> str:
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert "Traceback" not in body["detail"] and "<" not in body["detail"]
    assert f"reference {body['reference']}" in body["detail"]
    return body["reference"]


@pytest.mark.parametrize("route", ["/api/test/drf-key-error", "/api/test/django-error"])
def test_an_unhandled_exception_in_an_api_view_answers_json_with_a_logged_reference(
    client, debug, route, caplog
):
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = client.get(route)
    reference = assert_plain_json_500(response)
    logged = [r for r in caplog.records if reference in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, not the answer


def test_an_exception_before_the_view_answers_json_too(client, debug, settings, caplog):
    failing = "tests.baas_site.failing_middleware.FailingMiddleware"
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, failing]
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = client.get("/api/test/middleware-error")
    reference = assert_plain_json_500(response)
    assert any(reference in r.getMessage() for r in caplog.records)


def test_an_unknown_api_route_answers_json_404_even_with_debug_on(client, settings):
    settings.DEBUG = True
    response = client.get("/api/no/such/route")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_pages_outside_the_api_keep_their_html_error_page(client, settings):
    settings.DEBUG = False
    response = client.get("/images/test/django-error")
    assert response.status_code == 500
    assert "<h1>Server error</h1>" in response.content.decode()
