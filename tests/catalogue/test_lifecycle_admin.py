"""Administrators see storage used and set quotas and retention in Django admin."""

from __future__ import annotations

import os

import pytest
from django.template.defaultfilters import filesizeformat

from accounts.models import AuditEvent
from catalogue.storage import get_storage
from tests.catalogue.factories import ImageFactory, VersionFactory

pytestmark = pytest.mark.django_db

MiB = 1 << 20


@pytest.fixture
def stored(user):
    image = ImageFactory(owner=user, name="kernel")
    VersionFactory(image=image, number=0, content=os.urandom(3 * MiB))
    VersionFactory(image=image, number=1, content=os.urandom(MiB) + bytes(4 * MiB))
    directory = get_storage().image_dir(image.uuid)
    used = sum(p.stat().st_blocks * 512 for p in directory.iterdir())
    return image, used


def test_the_user_and_image_lists_show_the_storage_used(admin_web, user, stored):
    _, used = stored
    users = admin_web.get("/admin/accounts/user/").content.decode()
    images = admin_web.get("/admin/catalogue/image/").content.decode()
    assert "Storage used" in users and "Storage used" in images
    assert filesizeformat(used) in users
    assert filesizeformat(used) in images


def test_an_administrator_sets_a_quota_in_admin(admin_web, administrator, user):
    response = admin_web.post(
        f"/admin/accounts/user/{user.pk}/change/",
        {
            "username": user.username,
            "display_name": user.display_name,
            "email": user.email,
            "role": "user",
            "is_active": "on",
            "storage_quota": str(20 * 1024**3),
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    user.refresh_from_db()
    assert user.storage_quota == 20 * 1024**3
    event = AuditEvent.objects.get(action="user.quota", target_id=str(user.pk))
    assert (event.actor, event.data) == (administrator, {"old": None, "new": 20 * 1024**3})


def test_an_administrator_limits_an_images_versions_in_admin(admin_web, stored):
    image, _ = stored
    page = admin_web.get(f"/admin/catalogue/image/{image.uuid}/change/").content.decode()
    assert 'name="keep_versions"' in page
    assert 'name="expires_at"' not in page  # shown; owners extend it through the API
    response = admin_web.post(
        f"/admin/catalogue/image/{image.uuid}/change/",
        {
            "name": image.name,
            "owner": image.owner.pk,
            "description": "",
            "type": image.type,
            "compression": "none",
            "target_disk": image.target_disk,
            "transfer_protocol": "http",
            "keep_versions": "1",
            "versions-TOTAL_FORMS": "2",
            "versions-INITIAL_FORMS": "2",
            "versions-0-id": str(image.versions.get(number=0).pk),
            "versions-0-image": str(image.uuid),
            "versions-1-id": str(image.versions.get(number=1).pk),
            "versions-1-image": str(image.uuid),
        },
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    image.refresh_from_db()
    assert image.keep_versions == 1
