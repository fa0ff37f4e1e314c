from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.django_db


def test_healthz_is_ok_when_everything_is_up(client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "disk_root"}


def test_healthz_names_a_missing_image_root(client, disk_root):
    shutil.rmtree(disk_root)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["down"] == ["disk_root"]
    assert "does not exist" in response.json()["checks"]["disk_root"]


def test_healthz_names_a_broker_that_is_down(client, settings):
    from baas_site.celery import app

    old = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        response = client.get("/healthz")
    finally:
        app.conf.broker_url = old
    assert response.status_code == 503
    assert response.json()["down"] == ["broker"]
