"""Disk images at a URL: fetched from a local HTTP server, decoded exactly as an upload."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from catalogue.models import ImageType
from imports.models import State
from tests.catalogue.factories import ImageFactory
from tests.imports.helpers import run_import, stored_path

RAW = os.urandom(256 * 1024) + bytes(3 * 1024 * 1024) + b"BAAS" * 4096


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/redirect-private"):
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{self.server.server_port}/disk.img")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("served")
    (root / "disk.img").write_bytes(RAW)
    (root / "disk.img.zst").write_bytes(zstandard.ZstdCompressor().compress(RAW))
    (root / "disk.img.gz").write_bytes(gzip.compress(RAW))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: Files(*a, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def image(user, settings):
    settings.ALLOWED_HOSTS = ["baas.example.org"]  # BAAS is not at the test server's address
    return ImageFactory(owner=user, type=ImageType.SINGLE)


SHA = hashlib.sha256(RAW).hexdigest()


@pytest.mark.parametrize("name", ["disk.img", "disk.img.zst", "disk.img.gz"])
def test_a_url_import_stores_the_decoded_image_with_its_provenance(name, served, image, user):
    job = run_import(user, image, url=f"{served}/{name}", sha256=SHA)
    assert job.state == State.DONE, job.reason
    version = job.version
    assert version.sha256 == SHA and version.size == len(RAW)
    assert version.source_url == f"{served}/{name}" and version.source_sha256 == SHA
    assert stored_path(version).read_bytes()[: len(RAW)] == RAW or version.stored_compression


def test_a_checksum_that_differs_is_refused_and_nothing_stored(served, image, user):
    job = run_import(user, image, url=f"{served}/disk.img.zst", sha256="0" * 64)
    assert job.state == State.FAILED
    assert "does not have the SHA-256 given" in job.reason and "Nothing was stored" in job.reason
    assert not image.versions.exists()


def test_a_missing_file_is_refused_with_the_status(served, image, user):
    job = run_import(user, image, url=f"{served}/nope.img", sha256=SHA)
    assert job.state == State.FAILED and "answered 404" in job.reason


def test_a_private_address_is_refused_unless_its_host_is_allowed(served, image, user):
    url = served.replace("127.0.0.1", "localhost") + "/disk.img"
    job = run_import(user, image, url=url, sha256=SHA)
    assert job.state == State.FAILED
    assert "non-public address" in job.reason
    assert "BAAS_IMPORT_ALLOWED_HOSTS" in job.reason and "'localhost' is not listed" in job.reason


def test_a_redirect_to_a_private_address_is_refused(served, image, user):
    job = run_import(user, image, url=f"{served}/redirect-private", sha256=SHA)
    assert job.state == State.FAILED and "non-public address" in job.reason


def test_the_server_itself_is_refused(image, user, settings):
    settings.ALLOWED_HOSTS = ["baas.example.org"]
    job = run_import(user, image, url="https://baas.example.org/api/image/x/1", sha256=SHA)
    assert job.state == State.FAILED
    assert "'baas.example.org' is this BAAS server" in job.reason
    assert "BAAS_IMPORT_ALLOWED_HOSTS" in job.reason


def test_a_download_past_the_quota_is_stopped(served, image, user):
    user.storage_quota = 1024 * 1024
    user.save()
    image.owner.refresh_from_db()
    job = run_import(user, image, url=f"{served}/disk.img", sha256=SHA)
    assert job.state == State.FAILED
    assert "storage quota" in job.reason
    assert not image.versions.exists()


def test_a_signed_urls_token_is_kept_only_while_the_job_runs(served, image, user):
    """The audit event, the log, the version's note and provenance name the file without
    the query (a signed URL's token) or the fragment; the job's row, once it ended, too."""
    from accounts.models import AuditEvent

    signed = f"{served}/disk.img?X-Amz-Signature=secret-token&X-Amz-Expires=60#part"
    job = run_import(user, image, url=signed, sha256=SHA)
    assert job.state == State.DONE, job.reason
    version = job.version
    assert version.source_url == f"{served}/disk.img"
    assert "secret-token" not in version.note and f"{served}/disk.img" in version.note
    assert "secret-token" not in job.log and f"Fetching {served}/disk.img." in job.log
    event = AuditEvent.objects.get(action="image.import", target_id=str(image.pk))
    assert event.data["source"] == f"{served}/disk.img"
    refused = run_import(user, image, url=signed.replace("disk.img", "nope.img"), sha256=SHA)
    assert refused.state == State.FAILED and f"{served}/nope.img answered 404" in refused.reason
    assert "secret-token" not in refused.reason + refused.log
    for ended in (job, refused):  # the row needed the token only while the worker downloaded
        ended.refresh_from_db()
        assert ended.source == f"{served}/{'disk' if ended is job else 'nope'}.img"


def test_a_url_job_that_ends_without_running_forgets_its_token_too(served, image, user):
    """Cancelled while queued, or failed by the sweep because no worker took it."""
    from datetime import timedelta

    from django.utils import timezone

    from imports.models import ImportJob
    from imports.services import jobs

    signed = f"{served}/disk.img?sig=secret-token"
    ended = []
    for _ in range(2):
        job = jobs.import_create(
            actor=user, image=image, request=jobs.ImportRequest(url=signed, sha256=SHA)
        )
        assert job.source == signed  # the worker needs it to download
        ended.append(job)
    jobs.import_cancel(actor=user, job_id=ended[0].pk)
    ImportJob.objects.filter(pk=ended[1].pk).update(created_at=timezone.now() - timedelta(days=2))
    assert jobs.imports_sweep() == 1
    for job in ended:
        job.refresh_from_db()
        assert job.is_final and job.source == f"{served}/disk.img"


def test_a_shown_url_keeps_host_port_and_path_only():
    from imports.services.urls import shown_url

    assert (
        shown_url("https://u:p@h.example:8443/a/b.img?sig=1#f") == "https://h.example:8443/a/b.img"
    )
    assert shown_url("http://[::1]/x?y") == "http://[::1]/x"
