"""Django admin for images and versions: through the same services as the API."""

from __future__ import annotations

import pytest

from catalogue.models import Image, ImageType, Version
from catalogue.services.datamaps import version_map_build
from catalogue.storage import get_storage
from tests.catalogue.factories import ImageFactory, ImageFrozenFactory, VersionFactory
from tests.conftest import version_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_web(client, administrator, settings):
    settings.BAAS_NEW_IMAGE_SIZE = 1 << 20
    client.force_login(administrator)
    return client


def test_lists_and_change_pages_open_and_show_checksums(admin_web, user):
    version = VersionFactory(image=ImageFactory(owner=user, name="kernel"), number=0)
    for url in [
        "/admin/catalogue/image/?q=kernel&type__exact=single",
        f"/admin/catalogue/image/{version.image.uuid}/change/",
        "/admin/catalogue/image/add/",
        "/admin/catalogue/version/?q=kernel",
        f"/admin/catalogue/version/{version.pk}/change/",
    ]:
        response = admin_web.get(url)
        assert response.status_code == 200, url
    page = admin_web.get(f"/admin/catalogue/image/{version.image.uuid}/change/").content.decode()
    assert version.sha256 in page
    assert 'name="versions-0-sha256"' not in page  # shown, not editable


def test_a_versions_page_shows_where_its_processing_stands(admin_web, user):
    version = VersionFactory(image=ImageFactory(owner=user), number=1)
    url = f"/admin/catalogue/version/{version.pk}/change/"
    assert "digested" in admin_web.get(url).content.decode()  # no data map yet
    version_map_build(version_id=version.pk)
    assert ">ready<" in admin_web.get(url).content.decode()
    Version.objects.filter(pk=version.pk).update(damaged="Its file does not decode.")
    assert "damaged: Its file does not decode." in admin_web.get(url).content.decode()


def test_adding_an_image_in_the_admin_stores_its_empty_version_zero(admin_web, user):
    response = admin_web.post(
        "/admin/catalogue/image/add/",
        {
            "name": "from admin",
            "owner": user.pk,
            "description": "",
            "type": ImageType.SYSTEM,
            "file_standard": "raw",
            "compression": "none",
            "target_disk": "/dev/sdb",
            "transfer_protocol": "http",
            "versions-TOTAL_FORMS": "0",
            "versions-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    image = Image.objects.get(name="from admin")
    version = Version.objects.get(image=image)
    assert (version.number, version.size) == (0, 1 << 20)
    assert get_storage().stat(image.uuid, 0, "none").allocated == 0


def test_the_admin_refuses_to_delete_a_pinned_image_and_says_why(admin_web, user):
    pin = ImageFrozenFactory(version__image__owner=user, setup__name="lab setup")
    response = admin_web.post(
        f"/admin/catalogue/image/{pin.image.uuid}/delete/", {"post": "yes"}, follow=True
    )
    assert "lab setup" in response.content.decode()
    assert Image.objects.filter(pk=pin.image.pk).exists()


def test_the_admin_deletes_an_image_and_its_files(
    admin_web, user, django_capture_on_commit_callbacks
):
    version = VersionFactory(image=ImageFactory(owner=user), number=0)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_web.post(
            f"/admin/catalogue/image/{version.image.uuid}/delete/", {"post": "yes"}
        )
    assert response.status_code == 302
    assert not Image.objects.exists()
    assert not get_storage().image_dir(version.image.uuid).exists()


# --- Moderators: only the system images assigned to them ------------------------------------


@pytest.fixture
def moderator_web(client_factory, moderator):
    return client_factory(moderator)


@pytest.fixture
def client_factory():
    from django.test import Client

    def make(person):
        client = Client()
        client.force_login(person)
        return client

    return make


@pytest.fixture
def assigned(moderator, administrator):
    image = ImageFactory(owner=administrator, name="debian-assigned", type=ImageType.SYSTEM)
    image.maintainers.add(moderator)
    VersionFactory(image=image, number=0)
    return image


@pytest.fixture
def not_assigned(administrator, user):
    return [
        ImageFactory(owner=administrator, name="ubuntu-unassigned", type=ImageType.SYSTEM),
        ImageFactory(owner=user, name="private-kernel"),
    ]


def test_a_moderator_lists_only_the_system_images_assigned_to_them(
    moderator_web, assigned, not_assigned
):
    page = moderator_web.get("/admin/catalogue/image/").content.decode()
    assert "debian-assigned" in page
    assert "ubuntu-unassigned" not in page and "private-kernel" not in page
    versions = moderator_web.get("/admin/catalogue/version/").content.decode()
    assert "debian-assigned" in versions and "private-kernel" not in versions


def test_a_moderator_cannot_open_other_images(moderator_web, assigned, not_assigned):
    for image in not_assigned:
        response = moderator_web.get(f"/admin/catalogue/image/{image.uuid}/change/")
        assert response.status_code == 302  # "doesn't exist", back to the index
    version = VersionFactory(image=not_assigned[1], number=0)
    assert moderator_web.get(f"/admin/catalogue/version/{version.pk}/change/").status_code == 302


def test_a_moderator_changes_an_assigned_image_but_not_its_owner_or_maintainers(
    moderator_web, assigned, moderator, administrator, other_user
):
    page = moderator_web.get(f"/admin/catalogue/image/{assigned.uuid}/change/").content.decode()
    assert assigned.versions.get().sha256 in page  # the versions, read-only
    assert 'name="description"' in page
    assert 'name="owner"' not in page and 'name="maintainers"' not in page
    assert 'name="type"' not in page
    response = moderator_web.post(
        f"/admin/catalogue/image/{assigned.uuid}/change/",
        {
            "name": "debian-assigned",
            "description": "Debian 13 with the lab's kernel",
            "compression": "none",
            "target_disk": "/dev/sda",
            "transfer_protocol": "http",
            "owner": other_user.pk,  # ignored: read-only for moderators
            "type": ImageType.SINGLE,
            "maintainers": [],
            "versions-TOTAL_FORMS": "1",
            "versions-INITIAL_FORMS": "1",
            "versions-MIN_NUM_FORMS": "0",
            "versions-MAX_NUM_FORMS": "1000",
            "versions-0-id": assigned.versions.get().pk,
            "versions-0-image": assigned.uuid,
        },
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    assigned.refresh_from_db()
    assert assigned.description == "Debian 13 with the lab's kernel"
    assert (assigned.owner, assigned.type) == (administrator, ImageType.SYSTEM)
    assert list(assigned.maintainers.all()) == [moderator]


def test_a_moderator_neither_adds_nor_deletes_images_they_do_not_own(moderator_web, assigned):
    assert moderator_web.get("/admin/catalogue/image/add/").status_code == 403
    assert moderator_web.get(f"/admin/catalogue/image/{assigned.uuid}/delete/").status_code == 403
    page = moderator_web.get("/admin/catalogue/image/").content.decode()
    assert "delete_selected_images" not in page and "recompress" in page


def test_an_administrator_sees_every_image(admin_web, assigned, not_assigned):
    page = admin_web.get("/admin/catalogue/image/").content.decode()
    for name in ("debian-assigned", "ubuntu-unassigned", "private-kernel"):
        assert name in page


@pytest.fixture
def recompress(django_capture_on_commit_callbacks):
    """Post the admin's recompress action; the tasks it sends on commit run in-process."""
    from baas_site.celery import app

    def post(client, images):
        data = {"action": "recompress", "_selected_action": [str(i.pk) for i in images]}
        app.conf.task_always_eager = True
        try:
            with django_capture_on_commit_callbacks(execute=True):
                return client.post("/admin/catalogue/image/", data, follow=True)
        finally:
            app.conf.task_always_eager = False

    return post


def stored_as(image) -> set[str]:
    """The stored compression of each of ``image``'s versions, and their files on disk."""
    files = {p.name for p in version_files(image)}
    return {v.stored_compression for v in image.versions.all()} | files


def test_the_recompress_action_recompresses_each_image(admin_web, user, recompress):
    images = [ImageFactory(owner=user, compression="zstd") for _ in range(2)]
    for image in images:
        VersionFactory(image=image, number=0)
    response = recompress(admin_web, images)
    assert "Recompression scheduled for 2 image(s)." in response.content.decode()
    for image in images:
        assert stored_as(image) == {"zstd", "0.img.zst"}


def test_a_moderator_recompresses_only_assigned_images(
    moderator_web, assigned, administrator, recompress
):
    other = ImageFactory(owner=administrator, name="ubuntu-unassigned", type=ImageType.SYSTEM)
    VersionFactory(image=other, number=0)
    for image in (assigned, other):
        Image.objects.filter(pk=image.pk).update(compression="zstd")
    recompress(moderator_web, [assigned, other])
    assert stored_as(assigned) == {"zstd", "0.img.zst"}
    assert stored_as(other) == {"none", "0.img"}
