"""The processing sweep: a version's job that died is sent again, a live or recently queued
one is left alone, and after a few tries the version is marked damaged with why."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from catalogue.models import Version
from catalogue.services.datamaps import version_map_build
from catalogue.services.pipeline import versions_processing_sweep
from tests.catalogue.factories import ImageFactory, VersionFactory
from tests.celery_worker import ROOT

# A job at work on version 1 in a process of its own: it holds the version's job lock.
JOB = (
    "import sys, time; from catalogue.storage import LocalStorage; "
    "lock = LocalStorage(sys.argv[1]).job_lock(sys.argv[2], 1); lock.__enter__(); "
    "print('working', flush=True); time.sleep(600)"
)


@pytest.fixture
def owing(user):
    """Version 1 without its SHA-256: its digest job was sent an hour ago and began."""
    image = ImageFactory(owner=user)
    version = VersionFactory(image=image, number=1)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Version.objects.filter(pk=version.pk).update(
        sha256="", job_sent_at=an_hour_ago, job_started_at=an_hour_ago + timedelta(seconds=1)
    )
    return Version.objects.get(pk=version.pk)


def sweep(capture) -> dict:
    with capture() as sent:  # the jobs it sends, not run here
        report = versions_processing_sweep()
    report["sent"] = len(sent)
    return report


def test_a_job_that_died_is_sent_again(owing, django_capture_on_commit_callbacks):
    report = sweep(django_capture_on_commit_callbacks)
    assert report["resent"] == [owing.pk] and report["sent"] == 1
    owing.refresh_from_db()
    assert owing.job_resends == 1 and not owing.damaged


def test_a_job_at_work_in_a_live_process_is_left_alone(
    owing, disk_root, django_capture_on_commit_callbacks
):
    job = subprocess.Popen(
        [sys.executable, "-c", JOB, str(disk_root), str(owing.image_id)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert job.stdout.readline().strip() == "working"
        assert sweep(django_capture_on_commit_callbacks)["resent"] == []
    finally:
        job.kill()
        job.wait()
        job.stdout.close()
    assert sweep(django_capture_on_commit_callbacks)["resent"] == [owing.pk]  # it died


def test_a_job_queued_but_not_started_is_awaited_until_it_counts_as_lost(
    owing, settings, django_capture_on_commit_callbacks
):
    settings.BAAS_JOB_LOST_SECONDS = 7200
    Version.objects.filter(pk=owing.pk).update(job_started_at=None)
    assert sweep(django_capture_on_commit_callbacks)["resent"] == []
    settings.BAAS_JOB_LOST_SECONDS = 1800
    assert sweep(django_capture_on_commit_callbacks)["resent"] == [owing.pk]


def test_after_a_few_tries_the_version_is_marked_damaged_with_why(
    owing, settings, django_capture_on_commit_callbacks
):
    settings.BAAS_JOB_MAX_RESENDS = 3
    Version.objects.filter(pk=owing.pk).update(job_resends=3)
    report = sweep(django_capture_on_commit_callbacks)
    assert report["damaged"] == [owing.pk] and report["sent"] == 0
    owing.refresh_from_db()
    assert "its digest job stopped 4 times" in owing.damaged
    assert "Upload it again" in owing.damaged
    assert sweep(django_capture_on_commit_callbacks)["damaged"] == []  # once


def test_a_processed_version_owes_nothing(user, django_capture_on_commit_callbacks):
    version = VersionFactory(image=ImageFactory(owner=user), number=1)
    version_map_build(version_id=version.pk)  # digested, stored as its image says, mapped
    Version.objects.filter(pk=version.pk).update(job_sent_at=timezone.now() - timedelta(hours=2))
    report = sweep(django_capture_on_commit_callbacks)
    assert report["done"] == [version.pk] and report["sent"] == 0
    version.refresh_from_db()
    assert version.job_sent_at is None
