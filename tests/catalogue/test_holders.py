"""What other apps hold of the catalogue (``catalogue.holders``): the catalogue alone holds
nothing back; with flashing registered, what a deployment, a disk or a mount uses is kept."""

from __future__ import annotations

import pytest
from django.utils import timezone

from catalogue import holders
from catalogue.models import Image
from catalogue.services.lifecycle import temporal_expire, versions_prune
from flashing.models import DeploymentImage, DiskContent, NetworkMount
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, VersionFactory
from tests.flashing.factories import DeploymentFactory, MachineFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalogue_alone(monkeypatch):
    """No app built on the catalogue registered: as if flashing were not installed."""
    monkeypatch.setattr(holders, "_registry", {})


def image_with_versions(count: int, **fields) -> Image:
    image = ImageFactory(**fields)
    for number in range(count):
        VersionFactory(image=image, number=number, content=bytes([number + 1]) * 4096)
    return image


def mount(image: Image, number: int, state: str = "ready") -> NetworkMount:
    deployment = DeploymentFactory(state="done")
    return NetworkMount.objects.create(
        deployment=deployment,
        image=image,
        version=image.versions.get(number=number),
        version_number=number,
        disk="/dev/sdb",
        export_name=f"mount-{deployment.pk}",
        state=state,
    )


def write(image: Image, number: int, state: str) -> None:
    DeploymentImage.objects.create(
        deployment=DeploymentFactory(state=state),
        image=image,
        version=image.versions.get(number=number),
        version_number=number,
        disk="/dev/sda",
    )


def on_disk(image: Image, number: int) -> None:
    DiskContent.objects.create(
        machine=MachineFactory(),
        disk="/dev/sda",
        image=image,
        version=image.versions.get(number=number),
        version_number=number,
        written_at=timezone.now(),
    )


def versions_listed(client, image: Image) -> list[int]:
    body = client.get(f"/api/image/{image.uuid}").json()
    return sorted(v["number"] for v in body["versions"])


def limit(client, image: Image, keep: int, capture) -> None:
    """Limit the image through the API, then run the prune job it sends, as a worker would."""
    with capture(execute=False) as jobs:
        response = client.patch(f"/api/image/{image.uuid}", {"keep_versions": keep}, format="json")
    assert (response.status_code, len(jobs)) == (200, 1)
    with capture(execute=True):
        versions_prune(image_uuid=image.uuid)


def test_flashing_registers_itself_when_it_is_ready():
    assert [holder.label for holder in holders.holders()] == ["flashing"]


def test_registering_again_under_a_label_replaces_the_former_holder(monkeypatch):
    monkeypatch.setattr(holders, "_registry", {})
    first = holders.Holder("x", lambda _: True, lambda _: {1}, lambda _: "no", lambda _: None)
    second = holders.Holder("x", lambda _: False, lambda _: set(), lambda _: None, lambda _: None)
    holders.register(first)
    holders.register(second)
    image = ImageFactory()
    assert holders.holders() == (second,)
    assert not holders.image_busy(image_uuid=image.uuid)
    assert holders.image_delete_refusal(image=image) is None


def test_the_catalogue_alone_holds_nothing_back(catalogue_alone):
    image = image_with_versions(3)
    write(image, 0, "writing")
    on_disk(image, 1)
    mount(image, 2)
    setup = ImageSetupFactory(owner=image.owner)
    MachineFactory(default_setup=setup)

    assert not holders.image_busy(image_uuid=image.uuid)
    assert holders.versions_held(image=image) == set()
    assert holders.image_delete_refusal(image=image) is None
    assert holders.setup_delete_refusal(setup=setup) is None


def test_the_catalogue_alone_deletes_an_image_a_mount_uses(catalogue_alone, user, user_client):
    image = image_with_versions(1, owner=user, type="user_data")
    mount(image, 0)
    assert user_client.delete(f"/api/image/{image.uuid}").status_code == 204


def test_an_image_mounted_over_the_network_is_not_deleted(user, user_client):
    image = image_with_versions(1, owner=user, type="user_data")
    live = mount(image, 0)

    refused = user_client.delete(f"/api/image/{image.uuid}")
    assert refused.status_code == 409
    assert "mounted over the network" in refused.json()["detail"]
    assert Image.objects.filter(pk=image.pk).exists()

    NetworkMount.objects.filter(pk=live.pk).update(state="done")
    assert user_client.delete(f"/api/image/{image.uuid}").status_code == 204


def test_pruning_keeps_what_a_deployment_a_disk_or_a_mount_holds(
    user, user_client, django_capture_on_commit_callbacks
):
    image = image_with_versions(6, owner=user)
    write(image, 1, "writing")  # a running deployment writes it
    write(image, 2, "queued")  # a queued one will
    on_disk(image, 3)
    mount(image, 4)
    write(image, 0, "done")  # over: holds nothing

    limit(user_client, image, 1, django_capture_on_commit_callbacks)
    assert versions_listed(user_client, image) == [1, 2, 3, 4, 5]


def test_with_the_catalogue_alone_pruning_keeps_only_the_latest(
    catalogue_alone, user, user_client, django_capture_on_commit_callbacks
):
    image = image_with_versions(3, owner=user)
    write(image, 0, "writing")
    on_disk(image, 1)
    limit(user_client, image, 1, django_capture_on_commit_callbacks)
    assert versions_listed(user_client, image) == [2]


def test_a_setup_a_deployment_waits_for_is_not_deleted(user, user_client):
    setup = ImageSetupFactory(owner=user)
    queued = DeploymentFactory(setup=setup, state="queued")
    url = f"/api/user/{user.username}/image_setup/{setup.uuid}"

    refused = user_client.delete(url)
    assert refused.status_code == 409
    assert (
        f"Deployments #{queued.pk} of this setup are queued or running"
        in (refused.json()["detail"])
    )
    queued.state = "cancelled"
    queued.save()
    assert user_client.delete(url).status_code == 204


def expired_temporal_image_being_written() -> Image:
    image = image_with_versions(1, type="temporal", expires_at=timezone.now())
    write(image, 0, "booting")
    return image


def test_an_expired_temporal_image_waits_for_the_deployment_that_writes_it():
    image = expired_temporal_image_being_written()
    assert temporal_expire().waiting == [str(image.uuid)]
    assert Image.objects.filter(pk=image.pk).exists()


def test_with_the_catalogue_alone_an_expired_temporal_image_goes_at_once(
    catalogue_alone, django_capture_on_commit_callbacks
):
    image = expired_temporal_image_being_written()
    with django_capture_on_commit_callbacks(execute=True):
        assert temporal_expire().deleted == [str(image.uuid)]


def test_an_expired_temporal_image_waits_for_the_machine_that_mounts_it(user, user_client):
    """Made temporal while a machine mounts it over the network (its owner took it out of
    the setup first), it expires once the mount is over: its changes are still to come."""
    image = image_with_versions(1, owner=user, type="user_data")
    live = mount(image, 0)
    response = user_client.patch(f"/api/image/{image.uuid}", {"type": "temporal"}, format="json")
    assert response.status_code == 200, response.content
    Image.objects.filter(pk=image.pk).update(expires_at=timezone.now())

    assert temporal_expire().waiting == [str(image.uuid)]
    live.refresh_from_db()
    assert (live.image_id, live.version.number) == (image.uuid, 0)

    NetworkMount.objects.filter(pk=live.pk).update(state="done")
    assert temporal_expire().deleted == [str(image.uuid)]


def test_an_image_a_setup_mounts_over_the_network_stays_user_data(user, user_client):
    """Only user data is mounted over the network: as long as a setup mounts the image,
    its type stays; taken out of the setup, it may change."""
    image = image_with_versions(1, owner=user, type="user_data")
    setup = ImageSetupFactory(owner=user)
    url = f"/api/user/{user.username}/image_setup/{setup.uuid}/images"
    body = {"image": str(image.uuid), "version": 0, "mount": "network", "sync": True}
    assert user_client.post(url, body, format="json").status_code == 201

    refused = user_client.patch(f"/api/image/{image.uuid}", {"type": "temporal"}, format="json")
    assert refused.status_code == 409
    assert "mounted over the network by the setup" in refused.json()["detail"]
    assert Image.objects.get(pk=image.pk).type == "user_data"

    assert user_client.delete(f"{url}?image={image.uuid}").status_code == 204
    changed = user_client.patch(f"/api/image/{image.uuid}", {"type": "temporal"}, format="json")
    assert changed.status_code == 200, changed.content


def test_pruning_keeps_what_a_running_deployment_brought_back(
    user, user_client, django_capture_on_commit_callbacks
):
    """One image brought back from two disks, the image keeping one version: the first
    disk's version stays until the deployment ends (its result records it on that disk),
    though the second disk's came back after it."""
    image = image_with_versions(1, owner=user, type="user_data")
    deployment = DeploymentFactory(state="syncing")
    for disk in ("/dev/sda2", "/dev/sdb"):
        DeploymentImage.objects.create(
            deployment=deployment,
            image=image,
            version=image.versions.get(number=0),
            version_number=0,
            disk=disk,
            direction="sync",
        )
    for number in (1, 2):  # /dev/sda2's changes, then /dev/sdb's
        VersionFactory(image=image, number=number, content=bytes([number + 1]) * 4096)

    limit(user_client, image, 1, django_capture_on_commit_callbacks)
    assert versions_listed(user_client, image) == [0, 1, 2]

    deployment.state = "done"
    deployment.save()
    with django_capture_on_commit_callbacks(execute=True):  # beat's prune, its next tick
        versions_prune(image_uuid=image.uuid)
    assert versions_listed(user_client, image) == [2]
