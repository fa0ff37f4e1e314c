"""Behind nginx: BAAS authorises and decides, nginx sends the stored file (X-Accel-Redirect).

nginx runs with the project's own template (contrib/nginx/baas.conf.template)
in front of the live server; every answer a client sees must be the one BAAS
would give itself: status, bytes, ranges judged against BAAS's ETag, headers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from accounts import scopes
from catalogue.models import Compression
from tests.agent.servers import free_port, wait_listening
from tests.catalogue.factories import ImageFactory
from tests.celery_worker import ROOT
from tests.conftest import client_for

pytestmark = pytest.mark.django_db(transaction=True)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMPLATE = ROOT / "contrib" / "nginx" / "baas.conf.template"
PREFIX = "/_baas_files/"
CONTENT = hashlib.sha256(b"seed").digest() * 4096 + bytes(65536)  # 192 KiB


def nginx_conf(workdir: Path, *, listen: str, upstream: str, root: Path) -> str:
    server = (
        TEMPLATE.read_text()
        .replace("${BAAS_LISTEN}", listen)
        .replace("${BAAS_UPSTREAM}", upstream)
        .replace("${BAAS_IMAGE_ROOT}", str(root))
    )
    assert "${" not in server
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\nmaster_process off;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {workdir}/access.log;\n{temp}\n{server}\n}}\n"
    )


@pytest.fixture
def front(live_server, settings, disk_root, tmp_path):
    if not os.access(NGINX, os.X_OK):
        pytest.skip("nginx is not installed (apt-get install nginx)")
    settings.BAAS_ACCEL_REDIRECT = PREFIX
    port = free_port()
    conf = tmp_path / "nginx.conf"
    upstream = live_server.url.removeprefix("http://")
    conf.write_text(
        nginx_conf(tmp_path, listen=f"127.0.0.1:{port}", upstream=upstream, root=disk_root)
    )
    process = subprocess.Popen(
        [NGINX, "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port)
    yield f"http://127.0.0.1:{port}", live_server.url
    process.terminate()
    process.wait(10)


def get(url: str, token: str | None = None, method: str = "GET", **headers: str):
    request = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (local)
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def token_of(client, user) -> str:
    """A read-write token of ``user``, made through the API as a script would."""
    client = client_for(user, scopes.ALL)
    response = client.post(f"/api/user/{user.username}/tokens", {"name": "nginx"}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["token"]


@pytest.fixture
def uploaded(user, user_client):
    image = ImageFactory(owner=user)
    response = user_client.generic(
        "POST", f"/api/image/{image.uuid}", CONTENT, content_type="application/octet-stream"
    )
    assert response.status_code == 201, response.content
    return image, token_of(user_client, user)


def test_nginx_sends_the_file_with_the_answer_baas_decided(front, uploaded):
    proxy, direct = front
    image, token = uploaded
    path = f"/api/image/{image.uuid}/latest"

    # BAAS itself answers with the redirect and no body; HEAD is answered by BAAS.
    status, headers, body = get(direct + path, token)
    assert (status, body) == (200, b"")
    assert headers["X-Accel-Redirect"] == f"{PREFIX}{image.uuid}/1.img"
    _, head, _ = get(direct + path, token, method="HEAD")

    status, headers, body = get(proxy + path, token)
    assert (status, body) == (200, CONTENT)
    assert "X-Accel-Redirect" not in headers
    for name in (
        "ETag",
        "BAAS-Raw-Digest",
        "BAAS-Raw-Size",
        "Content-Disposition",
        "Content-Location",
        "Repr-Digest",
        "Content-Digest",
        "Cache-Control",
    ):
        assert headers[name] == head[name], name
    assert headers["Content-Length"] == str(len(CONTENT))
    assert headers["Content-Type"] == "application/octet-stream"


def test_ranges_and_if_range_are_judged_against_baas_etag(front, uploaded):
    proxy, direct = front
    image, token = uploaded
    url = f"{proxy}/api/image/{image.uuid}/latest"
    etag = get(f"{direct}/api/image/{image.uuid}/latest", token, method="HEAD")[1]["ETag"]

    status, headers, body = get(url, token, Range="bytes=100-4195")
    assert (status, body) == (206, CONTENT[100:4196])
    assert headers["Content-Range"] == f"bytes 100-4195/{len(CONTENT)}"
    assert headers["ETag"] == etag

    status, _, body = get(url, token, Range="bytes=100-199", **{"If-Range": etag})
    assert (status, body) == (206, CONTENT[100:200])
    # Another version's tag: the whole current file, as BAAS answers.
    status, _, body = get(url, token, Range="bytes=100-199", **{"If-Range": '"another"'})
    assert (status, body) == (200, CONTENT)
    # Several ranges: the whole file, as BAAS answers.
    status, _, body = get(url, token, Range="bytes=0-9,20-29")
    assert (status, body) == (200, CONTENT)
    # What BAAS answers without a file: unchanged, and a range past the end.
    assert get(url, token, **{"If-None-Match": etag})[0] == 304
    status, headers, _ = get(url, token, Range=f"bytes={len(CONTENT) + 10}-")
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(CONTENT)}")


def test_nobody_reaches_the_files_without_baas(front, uploaded, other_user, other_client):
    proxy, _ = front
    image, token = uploaded
    status, _, body = get(f"{proxy}{PREFIX}{image.uuid}/1.img", token)
    assert status == 404 and CONTENT[:64] not in body
    other = token_of(other_client, other_user)
    status, headers, body = get(f"{proxy}/api/image/{image.uuid}/latest", other)
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert get(f"{proxy}/api/image/{image.uuid}/latest")[0] in (401, 403)


def test_a_decoded_download_is_still_sent_by_baas(front, user, user_client):
    proxy, direct = front
    image = ImageFactory(owner=user, compression=Compression.ZSTD)
    response = user_client.generic(
        "POST", f"/api/image/{image.uuid}", CONTENT, content_type="application/octet-stream"
    )
    assert response.status_code == 201, response.content
    token = token_of(user_client, user)
    url = f"/api/image/{image.uuid}/latest"

    status, headers, body = get(proxy + url + "?decompress=1", token)
    assert (status, body) == (200, CONTENT)
    status, headers, _ = get(direct + url, token)
    assert headers["X-Accel-Redirect"].startswith(f"{PREFIX}{image.uuid}/1.img")
    status, headers, stored = get(proxy + url, token)
    assert (
        status == 200
        and headers["Content-Type"] == get(direct + url, token, method="HEAD")[1]["Content-Type"]
    )
    assert len(stored) == int(headers["Content-Length"])
