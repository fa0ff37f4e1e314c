from __future__ import annotations

import subprocess
import time
from pathlib import Path

from catalogue.models import Image, ImageType, Version
from catalogue.storage import get_storage
from imports.models import ImportJob
from imports.services import jobs


def run_import(actor, image, **request) -> ImportJob:
    """Create the job as the API would, then run it here (the worker's part)."""
    job = jobs.import_create(actor=actor, image=image, request=jobs.ImportRequest(**request))
    jobs.import_run(job_id=job.pk)
    job.refresh_from_db()
    return job


def new_system_image(owner, name: str, disk: str = "/dev/vda") -> Image:
    return Image.objects.create(name=name, owner=owner, type=ImageType.SYSTEM, target_disk=disk)


def import_version(client, image: Image, body: dict, timeout: float = 120) -> Version:
    """Import through the API (``client``'s user) and a real worker; the version made."""
    answer = client.post(f"/api/image/{image.uuid}/import", body, format="json")
    assert answer.status_code == 202, answer.content
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(answer["Location"]).json()
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert job["state"] == "done", job
    return Version.objects.get(image=image, number=job["version"])


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
