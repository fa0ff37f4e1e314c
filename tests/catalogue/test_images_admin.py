"""Django admin for images and versions: through the same services as the API."""

from __future__ import annotations

import pytest

from catalogue.models import Image, ImageType, Version
from catalogue.storage import get_storage
from tests.catalogue.factories import ImageFactory, ImageFrozenFactory, VersionFactory

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
