"""End to end, when things break: a killed agent, a corrupted file, a killed worker."""

from __future__ import annotations

import os
import signal
import time

import pytest

from catalogue.models import ImageType
from catalogue.storage import get_storage
from flashing.models import RUNNING_STATES, Deployment, DiskContent
from tests.flashing.e2e import MiB, image_bytes, sha256_of, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_an_agent_killed_mid_write_is_retried_and_the_next_deployment_succeeds(rig):
    rig.set_command(boot_timeout=10, progress_timeout=3)
    big = rig.image(ImageType.SINGLE, "/dev/sda", os.urandom(64 * MiB))
    deployment_id = rig.deploy(rig.setup(big))
    rig.wait(deployment_id, until=("writing", "verifying", "done", "failed"))
    pids = rig.agent_pids()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deployment = Deployment.objects.get(pk=deployment_id)
    assert deployment.state in RUNNING_STATES, "the agent finished before it could be killed"
    deployment = rig.wait(deployment_id)
    assert deployment.state == "done", deployment.failure_reason
    retry = deployment.events.get(action="retry")
    assert "went silent" in retry.message and deployment.attempt == 2
    assert len(rig.agent_pids()) == len(pids) + 1
    assert sha256_of(rig.disk("/dev/sda"), big.size) == big.sha256
    small = rig.image(ImageType.SINGLE, "/dev/sda", image_bytes(11))
    after = rig.wait(rig.deploy(rig.setup(small)))
    assert after.state == "done", after.failure_reason


def test_a_corrupted_download_is_never_recorded_as_written(rig):
    version = rig.image(ImageType.SINGLE, "/dev/sda", image_bytes(12))
    path = get_storage().version_path(version.image_id, 0, "none")
    with path.open("r+b") as handle:  # the stored file rots behind the server's back
        handle.seek(100_000)
        handle.write(b"bit rot")
    deployment = rig.wait(rig.deploy(rig.setup(version)))
    assert deployment.state == "failed"
    assert "SHA-256 mismatch" in deployment.failure_reason
    assert not DiskContent.objects.filter(machine=rig.machine).exists()
    assert not deployment.events.filter(action="done").exists()


def test_a_worker_killed_mid_deployment_still_finishes_it(rig, start_worker):
    rig.set_command(boot_timeout=6, progress_timeout=3)
    version = rig.image(ImageType.SYSTEM, "/dev/sda", image_bytes(13, 4 * MiB))
    first = start_worker()
    deployment_id = rig.deploy(rig.setup(version))
    wait_for(lambda: Deployment.objects.get(pk=deployment_id).state != "queued", "the start", 10)
    first.process.send_signal(signal.SIGKILL)  # mid-deployment: before or after its power-on
    first.process.wait()
    time.sleep(0.2)
    start_worker()
    deployment = rig.wait(deployment_id)
    assert deployment.state == "done", deployment.failure_reason
    assert sha256_of(rig.disk("/dev/sda"), version.size) == version.sha256
    assert DiskContent.objects.get(machine=rig.machine).version_id == version.pk
