"""The image pages of the dashboard, through Django's test client."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Role
from catalogue.models import Compression, FileStandard, Image, ImageType, Version
from tests.accounts.factories import UserFactory
from tests.catalogue.factories import ImageFactory, ImageFrozenFactory, VersionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def own_image(user):
    image = ImageFactory(owner=user, name="debian-12")
    VersionFactory(image=image, number=0, content=b"\0" * 4096)
    VersionFactory(image=image, number=1, content=b"kernel" * 1000)
    return image


def _url(name: str, image: Image | None = None) -> str:
    return reverse(name, kwargs={"image_id": image.pk} if image else None)


# --- Who may see what -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images", "image-new"])
def test_anonymous_visitors_are_sent_to_sign_in(client, name):
    response = client.get(_url(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize("name", ["image", "image-edit", "image-delete"])
def test_anonymous_visitors_cannot_open_an_image(client, own_image, name):
    response = client.get(_url(name, own_image))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("name", ["image", "image-edit", "image-delete"])
def test_another_users_private_image_is_not_found(signed_in, other_user, name):
    foreign = ImageFactory(owner=other_user)
    assert signed_in.get(_url(name, foreign)).status_code == 404
    assert signed_in.post(_url(name, foreign)).status_code == 404
    assert Image.objects.filter(pk=foreign.pk).exists()


def test_a_system_image_is_shown_to_users_without_edit_or_upload(signed_in, other_user):
    system = ImageFactory(owner=other_user, type=ImageType.SYSTEM, name="shared-os")
    VersionFactory(image=system, number=0)
    response = signed_in.get(_url("image", system))
    assert response.status_code == 200
    assert b"shared-os" in response.content
    assert _url("image-edit", system).encode() not in response.content
    assert b'id="upload"' not in response.content
    assert signed_in.get(_url("image-edit", system)).status_code == 403
    assert signed_in.get(_url("image-delete", system)).status_code == 403
    assert signed_in.post(_url("image-delete", system)).status_code == 403
    assert Image.objects.filter(pk=system.pk).exists()


# --- List ------------------------------------------------------------------------------------


def test_the_list_shows_my_images_and_system_images_but_not_others(signed_in, user, other_user):
    ImageFactory(owner=user, name="mine")
    ImageFactory(owner=other_user, type=ImageType.SYSTEM, name="shared")
    ImageFactory(owner=other_user, name="their-secret")
    response = signed_in.get(_url("images"))
    names = [image.name for image in response.context["page"].object_list]
    assert names == ["mine", "shared"]
    assert b"their-secret" not in response.content


def test_the_list_filters_by_type_owner_and_name(signed_in, user, other_user):
    ImageFactory(owner=user, name="alpha-boot", type=ImageType.BOOT)
    ImageFactory(owner=user, name="alpha-data", type=ImageType.USER_DATA)
    ImageFactory(owner=other_user, name="alpha-os", type=ImageType.SYSTEM)

    def names(**query):
        page = signed_in.get(_url("images"), query).context["page"]
        return [image.name for image in page.object_list]

    assert names(type="boot") == ["alpha-boot"]
    assert names(owner=other_user.username) == ["alpha-os"]
    assert names(search="DATA") == ["alpha-data"]
    assert names(search="alpha", type="system") == ["alpha-os"]
    assert names(search="nothing") == []


def test_an_unknown_type_filter_is_shown_as_an_error(signed_in, user):
    ImageFactory(owner=user)
    response = signed_in.get(_url("images"), {"type": "floppy"})
    assert response.status_code == 200
    assert "floppy" in response.context["filters"].errors["type"][0]


def test_the_list_is_paginated_and_keeps_the_filters(signed_in, user):
    for n in range(23):
        ImageFactory(owner=user, name=f"img-{n:02}")
    first = signed_in.get(_url("images"), {"search": "img"})
    assert len(first.context["page"].object_list) == 20
    assert b"search=img&amp;page=2" in first.content
    second = signed_in.get(_url("images"), {"search": "img", "page": 2})
    assert [i.name for i in second.context["page"].object_list] == ["img-20", "img-21", "img-22"]


def test_the_list_needs_the_same_queries_for_two_images_or_twenty(signed_in, user):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert signed_in.get(_url("images")).status_code == 200
        return len(queries)

    for _ in range(2):
        VersionFactory(image=ImageFactory(owner=user), number=0)
    few = count()
    for _ in range(18):
        VersionFactory(image=ImageFactory(owner=user), number=0)
    assert count() == few


# --- Detail ------------------------------------------------------------------------------------


def test_the_detail_page_shows_metadata_versions_and_download_links(signed_in, own_image):
    response = signed_in.get(_url("image", own_image))
    assert response.status_code == 200
    html = response.content.decode()
    latest = own_image.versions.get(number=1)
    assert latest.sha256 in html
    assert "/dev/sda" in html
    for number in (0, 1):
        assert f'href="/api/image/{own_image.pk}/{number}"' in html
    assert html.index(">v1 ") < html.index(">v0<")  # newest first
    assert 'id="upload"' in html
    assert f'action="/api/image/{own_image.pk}"' in html


def test_the_upload_section_tells_how_to_send_only_the_data(signed_in, own_image, other_user):
    html = signed_in.get(_url("image", own_image)).content.decode()
    assert f"baas login http://testserver --user {own_image.owner.username}" in html
    assert f"baas image push {own_image.pk} disk.img" in html
    assert 'href="/client/baas-upload"' in html  # the older client, for this release
    assert f"python3 baas-upload http://testserver/api/image/{own_image.pk} disk.img" in html
    system = ImageFactory(owner=other_user, type=ImageType.SYSTEM)
    VersionFactory(image=system, number=0)
    page = signed_in.get(_url("image", system)).content
    assert b"baas image push" not in page and b"baas-upload" not in page  # no upload


def test_anyone_may_fetch_the_upload_client_and_it_is_the_one_in_the_tree(client):
    response = client.get(reverse("upload-client"))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="baas-upload"'
    body = b"".join(response.streaming_content)
    assert body == (settings.BASE_DIR / "contrib" / "upload" / "baas-upload").read_bytes()
    assert body.startswith(b"#!/usr/bin/env python3")
    assert client.post(reverse("upload-client")).status_code == 405


def test_a_compressed_version_downloads_decompressed(signed_in, own_image):
    Version.objects.filter(image=own_image, number=1).update(stored_compression=Compression.ZSTD)
    html = signed_in.get(_url("image", own_image)).content.decode()
    assert f'href="/api/image/{own_image.pk}/1?decompress=1"' in html


# --- Create ------------------------------------------------------------------------------------


def test_a_user_creates_an_image_with_an_empty_version_0(signed_in, user):
    response = signed_in.post(
        _url("image-new"),
        {
            "name": "my-os",
            "type": ImageType.SINGLE,
            "file_standard": FileStandard.RAW,
            "compression": Compression.NONE,
            "target_disk": "/dev/nvme0n1",
            "transfer_protocol": "http",
            "description": "A test OS",
        },
    )
    image = Image.objects.get(name="my-os")
    assert response.status_code == 302
    assert response["Location"] == _url("image", image)
    assert image.owner == user
    assert image.target_disk == "/dev/nvme0n1"
    assert list(image.versions.values_list("number", flat=True)) == [0]


def test_the_create_form_shows_errors_from_the_models_validators(signed_in):
    response = signed_in.post(
        _url("image-new"),
        {
            "name": "a/b",
            "type": ImageType.SINGLE,
            "file_standard": FileStandard.RAW,
            "compression": Compression.NONE,
            "target_disk": "sda",
            "transfer_protocol": "http",
        },
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert "without '/'" in errors["name"][0]
    assert "is not a disk" in errors["target_disk"][0]
    assert not Image.objects.exists()


def test_a_user_is_not_offered_system_images(signed_in):
    form = signed_in.get(_url("image-new")).context["form"]
    assert ImageType.SYSTEM not in dict(form.fields["type"].choices)
    response = signed_in.post(
        _url("image-new"),
        {
            "name": "sneaky",
            "type": ImageType.SYSTEM,
            "file_standard": FileStandard.RAW,
            "compression": Compression.NONE,
            "target_disk": "/dev/sda",
            "transfer_protocol": "http",
        },
    )
    assert "type" in response.context["form"].errors
    assert not Image.objects.exists()


def test_a_moderator_creates_a_system_image(client):
    client.force_login(UserFactory(role=Role.MODERATOR))
    response = client.post(
        _url("image-new"),
        {
            "name": "lab-os",
            "type": ImageType.SYSTEM,
            "file_standard": FileStandard.QCOW2,
            "compression": Compression.NONE,
            "target_disk": "/dev/sda",
            "transfer_protocol": "http",
        },
    )
    assert response.status_code == 302
    image = Image.objects.get(name="lab-os")
    assert (image.type, image.file_standard) == (ImageType.SYSTEM, FileStandard.QCOW2)


# --- Edit ------------------------------------------------------------------------------------


def test_the_owner_edits_an_image(signed_in, own_image):
    form = signed_in.get(_url("image-edit", own_image)).context["form"]
    assert form.initial["name"] == "debian-12"
    assert "file_standard" not in form.fields
    response = signed_in.post(
        _url("image-edit", own_image),
        {
            "name": "debian-13",
            "type": ImageType.BOOT,
            "compression": Compression.NONE,
            "target_disk": "/dev/sdb",
            "transfer_protocol": "http",
            "description": "new",
        },
    )
    assert response.status_code == 302
    own_image.refresh_from_db()
    assert (own_image.name, own_image.type, own_image.target_disk) == (
        "debian-13",
        ImageType.BOOT,
        "/dev/sdb",
    )


def test_the_edit_form_shows_errors_and_changes_nothing(signed_in, own_image):
    response = signed_in.post(
        _url("image-edit", own_image),
        {
            "name": " ",
            "type": ImageType.SYSTEM,
            "compression": Compression.NONE,
            "target_disk": "/dev/../etc",
            "transfer_protocol": "http",
        },
    )
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"name", "type", "target_disk"}
    own_image.refresh_from_db()
    assert own_image.name == "debian-12"


# --- Delete ------------------------------------------------------------------------------------


def test_delete_asks_for_confirmation_then_deletes(signed_in, own_image):
    page = signed_in.get(_url("image-delete", own_image))
    assert page.status_code == 200
    assert b"Delete debian-12?" in page.content
    assert Image.objects.filter(pk=own_image.pk).exists()
    response = signed_in.post(_url("image-delete", own_image))
    assert response.status_code == 302
    assert response["Location"] == _url("images")
    assert not Image.objects.filter(pk=own_image.pk).exists()


def test_a_pinned_image_is_not_deleted_and_the_page_says_why(signed_in, user, own_image):
    ImageFrozenFactory(
        setup__owner=user, setup__name="lab", version=own_image.versions.get(number=1)
    )
    response = signed_in.post(_url("image-delete", own_image))
    assert response.status_code == 409
    assert '"lab"' in response.context["error"]
    assert b'role="alert"' in response.content
    assert Image.objects.filter(pk=own_image.pk).exists()
