"""Error pages: BAAS's own look on the dashboard, JSON under /api/."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from baas_site.errors import server_error
from tests.catalogue.factories import ImageFactory

pytestmark = pytest.mark.django_db


def test_a_missing_page_says_so_in_the_dashboards_frame(client, user):
    client.force_login(user)
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "<h1>Not found</h1>" in page
    assert "<code>/no/such/page/</code>" in page
    assert f"Sign out {user.username}" in page  # the usual header, signed in
    assert 'href="/images/"' in page


def test_another_users_image_page_looks_like_any_missing_page(client, user, other_user):
    client.force_login(user)
    foreign = ImageFactory(owner=other_user, name="secret-kernel")
    own = ImageFactory(owner=user, name="mine")
    assert client.get(f"/images/{own.pk}/").status_code == 200  # the same route, answering
    response = client.get(f"/images/{foreign.pk}/")
    assert response.status_code == 404
    assert "<h1>Not found</h1>" in response.content.decode()
    assert "secret-kernel" not in response.content.decode()


def test_the_api_answers_json_not_pages(client, user):
    client.force_login(user)
    response = client.get("/api/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_a_server_error_page_needs_nothing_that_could_fail():
    response = server_error(RequestFactory().get("/images/"))
    assert response.status_code == 500
    assert "<h1>Server error</h1>" in response.content.decode()
