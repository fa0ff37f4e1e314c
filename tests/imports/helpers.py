from __future__ import annotations

import subprocess
from pathlib import Path

from catalogue.models import Version
from catalogue.storage import get_storage
from imports.models import ImportJob
from imports.services import jobs


def run_import(actor, image, **request) -> ImportJob:
    """Create the job as the API would, then run it here (the worker's part)."""
    job = jobs.import_create(actor=actor, image=image, request=jobs.ImportRequest(**request))
    jobs.import_run(job_id=job.pk)
    job.refresh_from_db()
    return job


def stored_path(version: Version) -> Path:
    path = get_storage().version_file(version.image_id, version.number, version.stored_compression)
    assert path is not None
    return Path(path)


def ext4_ls(path: Path, directory: str) -> list[str]:
    out = subprocess.run(
        ["debugfs", "-R", f"ls -l {directory}", str(path)], capture_output=True, text=True
    ).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def ext4_cat(path: Path, name: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"cat {name}", str(path)], capture_output=True, text=True
    ).stdout


def ext4_stat(path: Path, name: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"stat {name}", str(path)], capture_output=True, text=True
    ).stdout
