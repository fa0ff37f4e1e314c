"""Temporal images: they expire, owners see when and extend within the maximum, and the beat
job deletes them with their files unless a queued or running deployment still needs them."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.models import AuditEvent
from catalogue.models import Image, ImageFrozen, ImageType, Version
from catalogue.services.lifecycle import temporal_expire
from catalogue.storage import get_storage
from catalogue.tasks import temporal_expire_task
from flashing.models import DeploymentImage, DiskContent
from tests.catalogue.factories import (
    ImageFactory,
    ImageFrozenFactory,
    ImageSetupFactory,
    VersionFactory,
)
from tests.flashing.factories import DeploymentFactory, MachineFactory


@pytest.fixture(autouse=True)
def _retention(settings):
    settings.BAAS_TEMPORAL_DEFAULT_DAYS = 7
    settings.BAAS_TEMPORAL_MAX_DAYS = 30
    settings.BAAS_NEW_IMAGE_SIZE = 1 << 20


def temporal(owner, *, expires_in: timedelta, versions: int = 2) -> Image:
    image = ImageFactory(
        owner=owner, type=ImageType.TEMPORAL, expires_at=timezone.now() + expires_in
    )
    for number in range(versions):
        VersionFactory(image=image, number=number)
    return image


def expires_at(response) -> timezone.datetime:
    return parse_datetime(response.json()["expires_at"])


def assert_gone(image: Image) -> None:
    assert not Image.objects.filter(pk=image.pk).exists()
    assert not Version.objects.filter(image_id=image.pk).exists()
    assert not get_storage().image_dir(image.uuid).exists()


def assert_kept(image: Image) -> None:
    assert Image.objects.filter(pk=image.pk).exists()
    assert sorted(p.name for p in get_storage().image_dir(image.uuid).iterdir()) == [
        "0.img",
        "1.img",
    ]


@pytest.fixture
def expire(django_capture_on_commit_callbacks):
    """One beat tick, in-process: the files go when the transaction commits."""

    def tick():
        with django_capture_on_commit_callbacks(execute=True):
            return temporal_expire_task()

    return tick


# --- Retention period and extension ----------------------------------------------------------


@pytest.mark.django_db
def test_a_new_temporal_image_expires_after_the_default_period(user_client, user):
    before = timezone.now()
    response = user_client.post(
        f"/api/user/{user.username}/image", {"name": "results", "type": "temporal"}, format="json"
    )
    assert response.status_code == 201
    assert before + timedelta(days=7) <= expires_at(response) <= timezone.now() + timedelta(days=7)
    listed = user_client.get(f"/api/user/{user.username}/images").json()["results"]
    assert listed[0]["expires_at"] == response.json()["expires_at"]


@pytest.mark.django_db
def test_only_temporal_images_expire_and_a_type_change_sets_or_clears_it(user_client, user):
    response = user_client.post(f"/api/user/{user.username}/image", {"name": "disk"}, format="json")
    url = f"/api/image/{response.json()['uuid']}"
    assert response.json()["expires_at"] is None
    made_temporal = user_client.patch(url, {"type": "temporal"}, format="json")
    assert expires_at(made_temporal) > timezone.now() + timedelta(days=6)
    made_single = user_client.patch(url, {"type": "single"}, format="json")
    assert made_single.json()["expires_at"] is None


@pytest.mark.django_db
def test_the_owner_extends_a_temporal_image_from_its_current_expiry(user_client, user):
    image = temporal(user, expires_in=timedelta(days=2))
    old = image.expires_at
    response = user_client.post(f"/api/image/{image.uuid}/extend", {"days": 10}, format="json")
    assert response.status_code == 200
    assert expires_at(response) == old + timedelta(days=10)
    image.refresh_from_db()
    assert image.expires_at == old + timedelta(days=10)
    assert AuditEvent.objects.filter(action="image.extend", target_id=str(image.pk)).exists()


@pytest.mark.django_db
def test_an_extension_past_the_maximum_is_refused_saying_how_much_is_left(user_client, user):
    image = temporal(user, expires_in=timedelta(days=20, hours=1))
    response = user_client.post(f"/api/image/{image.uuid}/extend", {"days": 15}, format="json")
    assert response.status_code == 400
    message = response.json()["detail"]
    assert message.startswith("days: ")
    assert "at most 30 days" in message
    assert "at most 9 day(s)" in message
    old = image.expires_at
    image.refresh_from_db()
    assert image.expires_at == old
    assert (
        user_client.post(f"/api/image/{image.uuid}/extend", {"days": 9}, format="json").status_code
        == 200
    )


@pytest.mark.django_db
def test_an_image_already_expired_is_extended_from_now(user_client, user):
    image = temporal(user, expires_in=-timedelta(days=3))
    before = timezone.now()
    response = user_client.post(f"/api/image/{image.uuid}/extend", {"days": 1}, format="json")
    assert response.status_code == 200
    assert expires_at(response) >= before + timedelta(days=1)


@pytest.mark.django_db
@pytest.mark.parametrize("days", [0, -1, "many"])
def test_an_extension_needs_a_positive_number_of_days(user_client, user, days):
    image = temporal(user, expires_in=timedelta(days=1))
    response = user_client.post(f"/api/image/{image.uuid}/extend", {"days": days}, format="json")
    assert response.status_code == 400


@pytest.mark.django_db
def test_an_image_that_is_not_temporal_cannot_be_extended(user_client, user):
    image = ImageFactory(owner=user)
    response = user_client.post(f"/api/image/{image.uuid}/extend", {"days": 1}, format="json")
    assert response.status_code == 409
    assert "temporal" in response.json()["detail"]


@pytest.mark.django_db
def test_nobody_else_extends_it_but_an_administrator(
    user, other_client, admin_client_api, moderator_client
):
    image = temporal(user, expires_in=timedelta(days=1))
    url = f"/api/image/{image.uuid}/extend"
    assert other_client.post(url, {"days": 1}, format="json").status_code == 404
    assert moderator_client.post(url, {"days": 1}, format="json").status_code == 404
    assert admin_client_api.post(url, {"days": 1}, format="json").status_code == 200


# --- The beat job ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_job_deletes_expired_temporal_images_and_their_files_only(user, expire):
    expired = temporal(user, expires_in=-timedelta(minutes=1))
    fresh = temporal(user, expires_in=timedelta(hours=1))
    lasting = ImageFactory(owner=user, type=ImageType.SINGLE)
    VersionFactory(image=lasting, number=0)

    outcome = expire()

    assert outcome["deleted"] == [str(expired.uuid)]
    assert_gone(expired)
    assert_kept(fresh)
    assert Image.objects.filter(pk=lasting.pk).exists()
    event = AuditEvent.objects.get(action="image.expire", target_id=str(expired.uuid))
    assert event.actor is None
    assert expire()["deleted"] == []  # nothing left to do


@pytest.mark.django_db
def test_files_are_removed_only_once_the_deletion_commits(user, django_capture_on_commit_callbacks):
    expired = temporal(user, expires_in=-timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        temporal_expire()
    assert not Image.objects.filter(pk=expired.pk).exists()
    assert get_storage().image_dir(expired.uuid).exists()  # not committed yet
    for callback in callbacks:
        callback()
    assert not get_storage().image_dir(expired.uuid).exists()


def deployment_using(image: Image, state: str, **extra):
    deployment = DeploymentFactory(state=state, **extra)
    DeploymentImage.objects.create(
        deployment=deployment,
        image=image,
        version=image.versions.get(number=1),
        version_number=1,
        disk="/dev/sda",
    )
    return deployment


@pytest.mark.django_db
@pytest.mark.parametrize("state", ["queued", "booting", "writing", "verifying"])
def test_an_image_a_queued_or_running_deployment_uses_waits_for_the_next_tick(user, expire, state):
    image = temporal(user, expires_in=-timedelta(minutes=1))
    deployment = deployment_using(image, state)

    outcome = expire()

    assert outcome == {"deleted": [], "waiting": [str(image.uuid)], "unpinned": {}}
    assert_kept(image)
    deployment.state = "done"
    deployment.save()
    assert expire()["deleted"] == [str(image.uuid)]
    assert_gone(image)
    assert DeploymentImage.objects.get(deployment=deployment).image is None  # history stays


@pytest.mark.django_db
@pytest.mark.parametrize("state", ["done", "failed", "cancelled"])
def test_finished_deployments_do_not_keep_an_image(user, expire, state):
    image = temporal(user, expires_in=-timedelta(minutes=1))
    deployment_using(image, state)
    assert expire()["deleted"] == [str(image.uuid)]
    assert_gone(image)


@pytest.mark.django_db
def test_an_image_a_queued_sync_will_bring_back_from_a_disk_waits(user, expire):
    image = temporal(user, expires_in=-timedelta(minutes=1))
    machine = MachineFactory()
    DiskContent.objects.create(
        machine=machine,
        disk="/dev/sdb",
        image=image,
        version=image.versions.get(number=1),
        version_number=1,
        sync=True,
        written_at=timezone.now(),
    )
    DeploymentFactory(machine=machine, state="queued", sync=True, setup=None)
    assert expire()["waiting"] == [str(image.uuid)]
    assert_kept(image)


@pytest.mark.django_db
def test_an_expired_image_pinned_by_setups_is_taken_out_of_them_and_deleted(user, expire):
    image = temporal(user, expires_in=-timedelta(minutes=1))
    other = ImageFactory(owner=user, target_disk="/dev/sdb")
    setup = ImageSetupFactory(owner=user, name="experiment")
    ImageFrozenFactory(setup=setup, version=image.versions.get(number=1), sync=True)
    ImageFrozenFactory(setup=setup, version=VersionFactory(image=other, number=0))

    outcome = expire()

    assert outcome["deleted"] == [str(image.uuid)]
    assert outcome["unpinned"] == {str(image.uuid): [str(setup.uuid)]}
    assert_gone(image)
    assert list(ImageFrozen.objects.filter(setup=setup).values_list("image_id", flat=True)) == [
        other.uuid
    ]
    removal = AuditEvent.objects.get(action="setup.image_remove", target_id=str(setup.uuid))
    assert removal.data == {"image": str(image.uuid), "version": 1, "reason": "expired"}


@pytest.mark.django_db
def test_an_image_extended_in_time_is_kept(user_client, user, expire):
    image = temporal(user, expires_in=timedelta(seconds=1))
    user_client.post(f"/api/image/{image.uuid}/extend", {"days": 1}, format="json")
    time.sleep(1.1)
    assert expire()["deleted"] == []
    assert_kept(image)


def test_the_job_is_scheduled_by_beat(settings):
    entries = {e["task"]: e for e in settings.CELERY_BEAT_SCHEDULE.values()}
    assert entries["catalogue.temporal_expire"]["schedule"] > 0


@pytest.mark.worker
def test_a_beat_tick_on_a_real_worker_deletes_an_expired_image_and_its_files(celery_worker):
    image = temporal(ImageFactory().owner, expires_in=-timedelta(seconds=1))
    waiting = temporal(image.owner, expires_in=-timedelta(seconds=1))
    deployment_using(waiting, "queued")
    directory = get_storage().image_dir(image.uuid)
    assert directory.exists()

    temporal_expire_task.delay()  # what beat sends

    deadline = time.monotonic() + 60
    while Image.objects.filter(pk=image.pk).exists() or directory.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"The expiry did not happen:\n{celery_worker.log()}")
        time.sleep(0.1)
    assert_gone(image)
    assert_kept(waiting)
