"""The embedded default and the production settings, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRINT_SETTINGS = (
    "import json; from django.conf import settings as s; "
    "print(json.dumps({'db': s.DATABASES['default']['ENGINE'], 'broker': s.CELERY_BROKER_URL, "
    "'disk': str(s.BAAS_DISK_ROOT), 'debug': s.DEBUG, 'secret': bool(s.SECRET_KEY)}))"
)


def bare_env(**extra: str) -> dict[str, str]:
    """No BAAS, Django, database or broker variables at all."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def test_with_no_environment_baas_uses_sqlite_a_filesystem_broker_and_local_disk():
    result = manage("shell", "-c", PRINT_SETTINGS, env=bare_env())
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["db"] == "django.db.backends.sqlite3"
    assert got["broker"] == "filesystem://"
    assert got["disk"] == str(ROOT / "var" / "disk")
    assert got["debug"] is True
    assert got["secret"] is True


def test_the_embedded_default_migrates_and_a_worker_runs_jobs_without_any_server(tmp_path):
    """SQLite plus kombu's filesystem broker: a real worker takes a real job."""
    env = bare_env(BAAS_VAR_DIR=str(tmp_path))
    assert manage("migrate", "--no-input", "-v0", env=env).returncode == 0
    seed = (
        "from datetime import timedelta; from django.utils import timezone; "
        "from accounts.models import AccessToken, User; "
        "u = User.objects.create_user('ada', 'ada@example.org'); "
        "AccessToken.objects.create(user=u, name='old', digest='a'*64, hint='x', "
        "expires_at=timezone.now() - timedelta(days=1)); "
        "from accounts.tasks import tokens_purge_expired_task as t; t.delay()"
    )
    result = manage("shell", "-c", seed, env=env)
    assert result.returncode == 0, result.stderr
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "baas_site",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--queues",  # as ./dev up's first worker: deployments' steps and beat's jobs
            "celery,periodic",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    count = "from accounts.models import AccessToken; print(AccessToken.objects.count())"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if manage("shell", "-c", count, env=env).stdout.strip().endswith("\n0"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the worker did not run the job")
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0]
    assert "accounts.tokens_purge_expired" in output
    assert (tmp_path / "db.sqlite3").exists()


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return bare_env(
        DEBUG="false",
        SECRET_KEY="x7!kq2" * 10,
        ALLOWED_HOSTS="baas.example.org",
        DATABASE_URL="postgres://baas@db.example.org/baas",
        CELERY_BROKER_URL="redis://redis.example.org:6379/0",
        BAAS_DISK_ROOT="/disk",
        BAAS_VAR_DIR=str(tmp_path),
        **extra,
    )


def test_production_settings_pass_check_deploy_with_no_warnings(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_long_jobs_are_configured_for_redis(tmp_path):
    code = (
        "import json; from baas_site.celery import app; c = app.conf; "
        "print(json.dumps({'acks_late': c.task_acks_late, 'prefetch': c.worker_prefetch_multiplier,"
        " 'soft': c.task_soft_time_limit, 'hard': c.task_time_limit, "
        "'visibility': c.broker_transport_options['visibility_timeout']}))"
    )
    result = manage("shell", "-c", code, env=production_env(tmp_path))
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout.strip().splitlines()[-1])
    assert conf["acks_late"] is True
    assert conf["prefetch"] == 1
    assert 0 < conf["soft"] < conf["hard"] < conf["visibility"]


def test_production_refuses_to_start_without_a_secret(tmp_path):
    env = production_env(tmp_path)
    del env["SECRET_KEY"]
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr
