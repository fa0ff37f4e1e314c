"""Retention: an image keeps its latest ``keep_versions`` versions, never deleting one that a
setup pins, that is on a machine's disk, or that a queued or running deployment uses."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from accounts.models import AuditEvent
from catalogue.models import Image, ImageFrozen, Version
from catalogue.services.lifecycle import versions_prune
from catalogue.storage import get_storage
from catalogue.tasks import versions_prune_task
from flashing.models import DeploymentImage, DiskContent
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.conftest import client_for, version_files
from tests.flashing.factories import DeploymentFactory, MachineFactory


def image_with_versions(count: int, **fields) -> Image:
    image = ImageFactory(**fields)
    for number in range(count):
        VersionFactory(image=image, number=number, content=bytes([number + 1]) * 8192)
    return image


def numbers(image: Image) -> list[int]:
    return sorted(image.versions.values_list("number", flat=True))


def files(image: Image) -> list[str]:
    return [p.name for p in version_files(image)]


@pytest.fixture
def prune(django_capture_on_commit_callbacks):
    def run(image: Image) -> list[int]:
        with django_capture_on_commit_callbacks(execute=True):
            return versions_prune(image_uuid=image.uuid)

    return run


@pytest.mark.django_db
def test_it_keeps_the_latest_versions_and_deletes_the_others_with_their_files(prune):
    image = image_with_versions(5, keep_versions=2)
    assert prune(image) == [0, 1, 2]
    assert numbers(image) == [3, 4]
    assert files(image) == ["3.img", "4.img"]
    event = AuditEvent.objects.get(action="version.prune", target_id=str(image.uuid))
    assert event.data == {"numbers": [0, 1, 2], "keep_versions": 2}
    assert prune(image) == []  # idempotent


@pytest.mark.django_db
def test_without_a_limit_every_version_is_kept(prune):
    image = image_with_versions(4)
    assert image.keep_versions is None
    assert prune(image) == []
    assert files(image) == ["0.img", "1.img", "2.img", "3.img"]


@pytest.mark.django_db
def test_pinned_and_on_disk_versions_are_never_deleted(prune):
    image = image_with_versions(6, keep_versions=1)
    ImageFrozenFactory(
        setup=ImageSetupFactory(owner=image.owner), version=image.versions.get(number=1)
    )
    DiskContent.objects.create(
        machine=MachineFactory(),
        disk="/dev/sda",
        image=image,
        version=image.versions.get(number=2),
        version_number=2,
        written_at=timezone.now(),
    )
    running = DeploymentFactory(state="writing")
    DeploymentImage.objects.create(
        deployment=running,
        image=image,
        version=image.versions.get(number=3),
        version_number=3,
        disk="/dev/sda",
    )

    assert prune(image) == [0, 4]

    assert numbers(image) == [1, 2, 3, 5]
    assert files(image) == ["1.img", "2.img", "3.img", "5.img"]
    running.state = "done"
    running.save()
    assert prune(image) == [3]  # a finished deployment no longer holds its version
    ImageFrozen.objects.all().delete()
    assert prune(image) == [1]
    assert numbers(image) == [2, 5]  # still on a machine's disk


@pytest.mark.django_db
def test_files_of_pruned_versions_go_only_after_the_commit(django_capture_on_commit_callbacks):
    image = image_with_versions(3, keep_versions=1)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert versions_prune(image_uuid=image.uuid) == [0, 1]
    assert files(image) == ["0.img", "1.img", "2.img"]
    for callback in callbacks:
        callback()
    assert files(image) == ["2.img"]


@pytest.mark.django_db
def test_a_compressed_version_is_pruned_with_its_file(prune):
    image = image_with_versions(2, keep_versions=1)
    old = image.versions.get(number=0)
    plain = get_storage().version_path(image.uuid, 0, "none")
    plain.rename(plain.with_name("0.img.zst"))
    Version.objects.filter(pk=old.pk).update(stored_compression="zstd")
    assert prune(image) == [0]
    assert files(image) == ["1.img"]


@pytest.mark.django_db
def test_the_beat_run_prunes_every_limited_image(django_capture_on_commit_callbacks, settings):
    limited = image_with_versions(3, keep_versions=1)
    unlimited = image_with_versions(3)
    with django_capture_on_commit_callbacks(execute=True):
        outcome = versions_prune_task()
    assert outcome == {str(limited.uuid): [0, 1]}
    assert files(limited) == ["2.img"]
    assert files(unlimited) == ["0.img", "1.img", "2.img"]
    entries = {e["task"]: e for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert entries["catalogue.versions_prune"]["schedule"] > 0


@pytest.mark.django_db
def test_keep_versions_is_set_through_the_api_and_prunes_after_the_commit(
    user_client, user, django_capture_on_commit_callbacks
):
    image = image_with_versions(3, owner=user)
    url = f"/api/image/{image.uuid}"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = user_client.patch(url, {"keep_versions": 1}, format="json")
    assert (response.status_code, response.json()["keep_versions"]) == (200, 1)
    assert len(callbacks) == 1  # the prune job, sent once the change is committed
    assert user_client.patch(url, {"keep_versions": 0}, format="json").status_code == 400
    cleared = user_client.patch(url, {"keep_versions": None}, format="json")
    assert cleared.json()["keep_versions"] is None


@pytest.mark.django_db
def test_someone_who_may_only_read_the_image_cannot_limit_it(other_client, administrator):
    image = image_with_versions(2, owner=administrator, type="system")
    response = other_client.patch(f"/api/image/{image.uuid}", {"keep_versions": 1}, format="json")
    assert response.status_code == 403
    image.refresh_from_db()
    assert image.keep_versions is None


@pytest.mark.worker
def test_an_upload_is_followed_by_pruning_on_a_real_worker(celery_worker, user):
    image = image_with_versions(3, owner=user, keep_versions=2)
    client = client_for(user)
    response = client.generic(
        "POST", f"/api/image/{image.uuid}", b"new" * 4096, "application/octet-stream"
    )
    assert (response.status_code, response.json()["version"]) == (201, 3)

    deadline = time.monotonic() + 60
    while numbers(image) != [2, 3] or files(image) != ["2.img", "3.img"]:
        if time.monotonic() > deadline:
            pytest.fail(f"Pruning did not happen: {numbers(image)}\n{celery_worker.log()}")
        time.sleep(0.1)
