"""Each log line names what it is about: the user, the image, the deployment…

Through the real interfaces: a gunicorn serving the test database with
``LOG_FORMAT=json`` (what a log shipper reads), and a task run by Celery's own
tracer, whose signals bind the task's arguments.
"""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
from django.db import connection

from baas_site.logcontext import ContextFilter
from catalogue.storage import get_storage
from catalogue.tasks import version_advance_task
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.celery_worker import database_url
from tests.gunicorn import gunicorn


@pytest.fixture
def json_gunicorn(transactional_db, disk_root, tmp_path):
    """gunicorn on the test database, its log as JSON lines in a file: (URL, log path)."""
    log_path = tmp_path / "gunicorn.log"
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "BAAS_DISK_ROOT": str(disk_root),
        "LOG_FORMAT": "json",
    }
    with gunicorn(env, log_path) as url:
        yield url, log_path


def records(log_path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]


def test_a_request_s_log_line_names_its_user_and_image(json_gunicorn, user):
    from accounts.services import token_create

    base, log_path = json_gunicorn
    image = ImageFactory(owner=user, name="lost")
    version = VersionFactory(image=image, number=0, content=b"\1" * 8192)
    get_storage().version_path(image.pk, 0, version.stored_compression).unlink()
    token = token_create(actor=user, user=user, name="logs")[1]
    answer = httpx.get(
        f"{base}/api/image/{image.uuid}/0", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert answer.is_error

    deadline = time.monotonic() + 10
    while not (lines := [r for r in records(log_path) if "is missing" in r["message"]]):
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    (line,) = lines
    assert line["user"] == user.username
    assert line["image"] == str(image.uuid)
    assert line["number"] == "0"
    assert "deployment" not in line


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_task_s_log_lines_name_what_it_works_on(db, user):
    image = ImageFactory(owner=user, name="processed")
    version = VersionFactory(image=image, number=0, content=b"\2" * 8192)
    kept = Kept()
    logger = logging.getLogger("catalogue")
    logger.addHandler(kept)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        version_advance_task.apply(args=[version.pk]).get()
        logging.getLogger("catalogue.after").info("after the task")
    finally:
        logger.removeHandler(kept)
        logger.setLevel(level)

    during = [r for r in kept.records if r.name != "catalogue.after"]
    assert during, "the task logged nothing"
    assert all(getattr(r, "version", None) == str(version.pk) for r in during)
    assert f"[version={version.pk}]" in during[0].context
    (after,) = [r for r in kept.records if r.name == "catalogue.after"]
    assert not hasattr(after, "version")  # the task's context ended with it
    assert after.context == ""


@pytest.mark.worker
def test_a_text_format_worker_s_lines_name_what_the_task_works_on(celery_worker, user):
    """Celery's own text lines (its handlers, its format) end with the task's fields."""
    image = ImageFactory(owner=user, name="processed")
    version = VersionFactory(image=image, number=0, content=b"\2" * 8192)
    version_advance_task.delay(version.pk)
    deadline = time.monotonic() + 30
    while not (
        lines := [x for x in celery_worker.log().splitlines() if f"[version={version.pk}]" in x]
    ):
        assert time.monotonic() < deadline, celery_worker.log()[-3000:]
        time.sleep(0.1)
    assert any("now ready" in line for line in lines), lines  # the task's own lines
    assert "--- Logging error ---" not in celery_worker.log()
