"""docs/operations.md's backup and restore, run as written against a real PostgreSQL.

The ```sh blocks under "### Back up" and "### Restore" are run by bash with the
environment BAAS has (``DATABASE_URL``, ``BAAS_DISK_ROOT``) and ``BACKUP``: the
test's database and image root are backed up, restored into a new database and
an empty image root, and a gunicorn on the restored pair serves every version's
bytes to the token made before the backup. ``check_storage`` then names what a
restore can get wrong: a missing file, a file whose bytes changed.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from django.db import connection

from accounts.services import token_create
from catalogue.services.compression import version_compress
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.celery_worker import ROOT, database_url
from tests.gunicorn import gunicorn

MiB = 1 << 20


def blocks(heading: str) -> str:
    """The ```sh blocks under ``heading`` in docs/operations.md, up to the next heading."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n#", start + len(heading) + 2)
    section = text[start : end if end != -1 else None]
    found = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found, f"no sh block under {heading}"
    return "set -euo pipefail\n" + "\n".join(found)


def run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # `python` is BAAS's
    return subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={**os.environ, "PATH": path, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def empty_database():
    """A new, empty PostgreSQL database beside the test's: its URL; dropped afterwards."""
    settings = connection.settings_dict
    if "postgresql" not in settings["ENGINE"]:
        pytest.skip("restoring needs PostgreSQL: set DATABASE_URL=postgres://…")
    name = f"{settings['NAME']}_restored"
    admin = {**settings, "NAME": "postgres"}
    with psycopg.connect(database_url(admin), autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')
    yield database_url({**settings, "NAME": name})
    with psycopg.connect(database_url(admin), autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def kept_image(transactional_db, user):
    """An image of two zstd versions, one mostly holes: (image, token, {number: sha256})."""
    image = ImageFactory(owner=user, name="kept", compression="zstd")
    first = bytearray(8 * MiB)
    first[MiB : 2 * MiB] = os.urandom(MiB)
    first[5 * MiB : 5 * MiB + 4096] = b"\x7f" * 4096
    first_version = VersionFactory(image=image, number=0, content=bytes(first))
    second = bytes(first[: 3 * MiB]) + os.urandom(MiB) + bytes(4 * MiB)
    compressed = VersionFactory(image=image, number=1, content=second)
    for version in (first_version, compressed):
        assert version_compress(version_id=version.pk) is not None
    token = token_create(actor=user, user=user, name="before the backup")[1]
    digests = {n: hashlib.sha256(bytes(c)).hexdigest() for n, c in ((0, first), (1, second))}
    return image, token, digests


def test_a_backup_restored_serves_every_version_to_the_old_token(
    kept_image, empty_database, disk_root, tmp_path
):
    image, token, digests = kept_image
    backup = tmp_path / "backup"
    here = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "BAAS_DISK_ROOT": str(disk_root),
    }
    done = run(blocks("### Back up"), {**here, "BACKUP": str(backup)})
    assert done.returncode == 0, done.stderr

    restored_root = tmp_path / "restored-root"
    restored_root.mkdir()
    there = {"DATABASE_URL": empty_database, "BAAS_DISK_ROOT": str(restored_root)}
    done = run(blocks("### Restore"), {**there, "BACKUP": str(backup)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 versions, 2 read back: the image root and the database agree." in done.stdout

    with gunicorn(there, tmp_path / "gunicorn.log") as base:
        for number, digest in digests.items():
            answer = httpx.get(
                f"{base}/api/image/{image.uuid}/{number}?format=raw",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            assert hashlib.sha256(answer.content).hexdigest() == digest
    assert (restored_root / str(image.uuid) / "1.img.zst").exists()  # stored as it was


def check_storage(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
    return run(f"python manage.py check_storage {' '.join(flags)}", env)


def test_check_storage_names_a_missing_file_and_changed_bytes(kept_image, disk_root):
    image, _, _ = kept_image
    env = {"DATABASE_URL": database_url(connection.settings_dict), "BAAS_DISK_ROOT": str(disk_root)}
    assert check_storage(env, "--verify").returncode == 0

    stored = disk_root / str(image.uuid) / "0.img.zst"
    with stored.open("r+b") as file:  # a bit flipped in the middle of the compressed data
        file.seek(stored.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x10]))
    found = check_storage(env)
    assert found.returncode == 0, found.stderr  # without --verify only presence is checked
    found = check_storage(env, "--verify")
    assert found.returncode == 1
    assert f"differs: version 0 of image {image.uuid}: its file" in found.stderr

    (disk_root / str(image.uuid) / "1.img.zst").unlink()
    (disk_root / str(image.uuid) / "7.img").write_bytes(b"left over")
    found = check_storage(env)
    assert found.returncode == 1
    assert f"missing: version 1 of image {image.uuid}" in found.stderr
    assert f"stray: {image.uuid}/7.img belongs to no version" in found.stderr
