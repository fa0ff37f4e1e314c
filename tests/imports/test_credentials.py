"""Registry credentials: used once by the worker, found in no log, event or row afterwards."""

from __future__ import annotations

import importlib
import time
import warnings
from pathlib import Path

import pytest
from django.core import serializers

from accounts.models import AuditEvent
from catalogue.models import Version
from imports.models import ImportJob
from tests.conftest import client_for
from tests.imports.oci import Layout, Registry, file

PASSWORD = "pw-that-must-never-show-7f3a9c"


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("private-registry")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = importlib.import_module("crypt")  # bcrypt for docker-registry's htpasswd
        hashed = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))
    (root / "htpasswd").write_text(f"researcher:{hashed}\n")
    registry = Registry(root, htpasswd=root / "htpasswd")
    registry.start()
    layout = Layout(root / "oci")
    layout.tag("v1", layout.image([[file("etc/private", "only with a login\n")]]))
    reference = registry.push(layout, "v1", "lab/private", creds=f"researcher:{PASSWORD}")
    yield reference
    registry.stop()


def wait_final(client, job_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/import/{job_id}").json()
        if body["state"] in ("done", "failed", "cancelled"):
            return body
        time.sleep(0.3)
    pytest.fail(f"import {job_id} did not end: {body}")


@pytest.mark.worker
def test_credentials_pull_a_private_image_and_are_kept_nowhere(
    celery_worker, private_registry, system_image, moderator, caplog
):
    api = client_for(moderator)
    answer = api.post(
        f"/api/image/{system_image.uuid}/import",
        {"oci": private_registry, "username": "researcher", "password": PASSWORD},
        format="json",
    )
    assert answer.status_code == 202
    assert PASSWORD not in answer.content.decode()
    body = wait_final(api, answer.json()["id"])
    assert body["state"] == "done", body["reason"] + body["log"]
    assert body["version"] == 1
    rows = serializers.serialize(
        "json",
        [*ImportJob.objects.all(), *AuditEvent.objects.all(), *Version.objects.all()],
    )
    assert "researcher" not in rows and PASSWORD not in rows
    logs = celery_worker.log() + caplog.text
    assert PASSWORD not in logs
    assert "credentials hidden" in logs or "imports.import_run" in logs
    worker_work_dir = Path(__file__).resolve().parents[2] / "var" / "imports"  # its default
    assert not list(worker_work_dir.rglob("auth.json")), "the auth file went with the job"


@pytest.mark.worker
def test_without_credentials_the_private_registry_refuses(
    celery_worker, private_registry, system_image, moderator
):
    api = client_for(moderator)
    answer = api.post(
        f"/api/image/{system_image.uuid}/import", {"oci": private_registry}, format="json"
    )
    body = wait_final(api, answer.json()["id"])
    assert body["state"] == "failed"
    assert "refused" in body["reason"] and "credentials" in body["reason"]
    assert not Version.objects.filter(image=system_image).exists()
