"""GET /metrics: who may scrape it, and figures that move when the lab is used."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.services import token_create
from catalogue.models import ImageType
from catalogue.tasks import image_recompress_task, version_advance_task
from flashing.models import Deployment
from tests.agent.servers import free_port
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.celery_worker import ROOT, database_url
from tests.flashing.factories import DeploymentFactory, LeaseFactory, MachineFactory
from tests.flashing.test_deployments import make_setup, queue

pytestmark = pytest.mark.django_db


def scrape(client: Client | None = None, **extra) -> dict[str, float]:
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


def parse(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_an_upload_and_a_deployment_move_the_figures(user_client, user):
    image = ImageFactory(owner=user, type=ImageType.SINGLE)
    before = scrape()
    assert before['baas_images{type="single"}'] == 1

    body = b"\x5a" * 8192 + bytes(57344)
    response = user_client.generic(
        "POST", f"/api/image/{image.uuid}", body, content_type="application/octet-stream"
    )
    assert response.status_code == 201, response.content
    machine = MachineFactory(state="leased")
    LeaseFactory(machine=machine, user=user)
    assert queue(user_client, machine, make_setup(user)).status_code == 201

    after = scrape()
    versions = sum(v for k, v in after.items() if k.startswith("baas_versions{"))
    assert versions == sum(v for k, v in before.items() if k.startswith("baas_versions{")) + 2
    assert after['baas_version_bytes{kind="logical"}'] >= before[
        'baas_version_bytes{kind="logical"}'
    ] + len(body)
    assert (
        after['baas_deployments{state="queued"}']
        == before.get('baas_deployments{state="queued"}', 0) + 1
    )
    assert after["baas_leases_active"] == 1
    assert after['baas_image_root_bytes{kind="free"}'] > 0
    assert after[f'baas_machine_queue{{machine="{machine.name}"}}'] == 1
    upload = 'baas_http_body_bytes_total{direction="received",route="/api/image/<str:image_id>"}'
    assert after[upload] - before.get(upload, 0) == len(body)

    number = response.json()["number"]
    download = user_client.get(f"/api/image/{image.uuid}/{number}")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == body
    route = "/api/image/<str:image_uuid>/<int:number>"
    sent = f'baas_http_body_bytes_total{{direction="sent",route="{route}"}}'
    assert scrape()[sent] - after.get(sent, 0) == len(body)


def test_finished_deployments_durations_by_how_they_ended(user):
    machine = MachineFactory()
    setup = make_setup(user)
    start = timezone.now() - timedelta(hours=1)
    for took, state in ((90, "done"), (400, "done"), (5000, "failed")):
        deployment = DeploymentFactory(machine=machine, setup=setup, state=state)
        Deployment.objects.filter(pk=deployment.pk).update(
            started_at=start, finished_at=start + timedelta(seconds=took)
        )
    DeploymentFactory(machine=machine, setup=setup, state="queued")  # not finished: not counted

    samples = scrape()
    done = 'baas_deployment_duration_seconds_bucket{le="%s",state="done"}'
    assert samples[done % "60"] == 0
    assert samples[done % "120"] == 1
    assert samples[done % "600"] == 2
    assert samples[done % "+Inf"] == 2
    assert samples['baas_deployment_duration_seconds_sum{state="done"}'] == 490
    assert samples['baas_deployment_duration_seconds_count{state="failed"}'] == 1
    assert samples['baas_deployment_duration_seconds_count{state="cancelled"}'] == 0
    assert samples[f'baas_machine_queue{{machine="{machine.name}"}}'] == 1


def test_celery_tasks_are_counted_by_outcome(user):
    succeeded = 'baas_celery_tasks_total{outcome="succeeded",task="catalogue.version_advance"}'
    before = scrape().get(succeeded, 0)
    version = VersionFactory(image=ImageFactory(owner=user), number=0)
    version_advance_task.apply(args=[version.pk]).get()
    assert scrape()[succeeded] == before + 1

    failed = 'baas_celery_tasks_total{outcome="failed",task="catalogue.image_recompress"}'
    image_recompress_task.apply(args=["not a uuid"])
    assert scrape()[failed] == 1


def test_requests_are_counted_by_route_never_by_path(user_client, user):
    image = ImageFactory(owner=user)
    for _ in range(3):
        assert user_client.get(f"/api/image/{image.uuid}").status_code == 200
    text = Client().get("/metrics").content.decode()
    assert str(image.uuid) not in text
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("baas_http_requests_total{") and 'status="200"' in line
    ]
    assert any('route="/api/image/<str:image_id>"' in line for line in counted), counted


def test_a_client_outside_the_metrics_networks_gets_a_404(settings):
    assert Client(REMOTE_ADDR="192.0.2.7").get("/metrics").status_code == 404
    # A header anyone can send proves nothing unless a trusted proxy sent it.
    spoofed = Client(REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert spoofed.get("/metrics").status_code == 404


def test_behind_a_trusted_proxy_the_real_client_is_checked(settings):
    settings.BAAS_TRUSTED_PROXIES = ["10.1.0.1"]
    settings.BAAS_METRICS_NETWORKS = ["198.51.100.0/24"]
    proxy = {"REMOTE_ADDR": "10.1.0.1"}
    assert Client(**proxy, HTTP_X_FORWARDED_FOR="192.0.2.7").get("/metrics").status_code == 404
    assert Client(**proxy, HTTP_X_FORWARDED_FOR="198.51.100.9").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 404


# --- Under gunicorn: every worker's requests in one answer --------------------------------


@pytest.fixture
def gunicorn_server(transactional_db, disk_root, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "BAAS_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "BAAS_VAR_DIR": str(tmp_path / "var"),
        "BAAS_DISK_ROOT": str(disk_root),
        "DATABASE_URL": database_url(connection.settings_dict),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "gunicorn.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "baas_site.wsgi"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:  # a connection, not a request: the test counts every request
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _workers(master: int) -> set[int]:
    return set(map(int, Path(f"/proc/{master}/task/{master}/children").read_text().split()))


def _get(url: str) -> bytes:
    return urllib.request.urlopen(url, timeout=60).read()  # noqa: S310 (a local server)


def test_every_gunicorn_worker_is_counted_even_once_gone(gunicorn_server):
    url, master = gunicorn_server
    for _ in range(10):
        _get(f"{url}/accounts/login/")
    (first,) = _workers(master)
    os.kill(first, signal.SIGTERM)  # gunicorn starts another in its place
    deadline = time.monotonic() + 60
    while _workers(master) in (set(), {first}):
        assert time.monotonic() < deadline, "gunicorn started no new worker"
        time.sleep(0.1)
    for _ in range(10):
        _get(f"{url}/accounts/login/")

    text = _get(f"{url}/metrics").decode()
    served = parse(text)
    key = 'baas_http_requests_total{method="GET",route="/accounts/login/",status="200"}'
    assert served[key] == 20, text  # both workers' requests, the gone one's included
    assert re.search(r"^baas_images\{", text, re.M)


def test_a_chunked_upload_counts_the_bytes_that_arrived(gunicorn_server, user):
    """No Content-Length: gunicorn decodes the chunks, and the figure is what the view read."""
    url, _master = gunicorn_server
    image = ImageFactory(owner=user, type=ImageType.SINGLE)
    secret = token_create(actor=user, user=user, name="metrics")[1]
    body = b"\x5a" * 8192 + bytes(3 * 65536)
    upload = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    upload.request(
        "POST",
        f"/api/image/{image.uuid}",
        body=iter([body[:5000], body[5000:100000], body[100000:]]),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/octet-stream"},
        encode_chunked=True,
    )
    answer = upload.getresponse()
    assert answer.status == 201, answer.read()
    answer.read()
    upload.close()

    served = parse(_get(f"{url}/metrics").decode())
    key = 'baas_http_body_bytes_total{direction="received",route="/api/image/<str:image_id>"}'
    assert served[key] == len(body)
