from __future__ import annotations

import pytest

from accounts.models import AuditEvent, Role
from tests.accounts.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "superuser", "allowed"),
    [
        (Role.USER, False, False),
        (Role.MODERATOR, False, False),
        (Role.ADMINISTRATOR, False, True),
        (Role.USER, True, True),
    ],
)
def test_only_administrators_reach_django_admin(client, role, superuser, allowed):
    person = UserFactory(role=role, is_superuser=superuser)
    assert client.login(username=person.username, password=PASSWORD)
    response = client.get("/admin/")
    if allowed:
        assert response.status_code == 200
        assert client.get("/admin/accounts/user/").status_code == 200
    else:
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_the_admin_login_form_refuses_non_administrators(client):
    person = UserFactory(role=Role.MODERATOR)
    response = client.post(
        "/admin/login/?next=/admin/", {"username": person.username, "password": PASSWORD}
    )
    assert response.status_code == 200  # the form again, with an error
    assert client.get("/admin/").status_code == 302


def test_an_administrator_changes_a_role_in_admin(client):
    admin = UserFactory(role=Role.ADMINISTRATOR)
    target = UserFactory(role=Role.USER)
    assert client.login(username=admin.username, password=PASSWORD)
    response = client.post(
        f"/admin/accounts/user/{target.pk}/change/",
        {
            "username": target.username,
            "display_name": target.display_name,
            "email": target.email,
            "role": "moderator",
            "is_active": "on",
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    target.refresh_from_db()
    assert target.role == Role.MODERATOR
    event = AuditEvent.objects.get(action="user.role", target_id=str(target.pk))
    assert (event.actor, event.data) == (admin, {"old": "user", "new": "moderator"})


def test_dashboard_sign_in_and_out(client):
    person = UserFactory(role=Role.USER)
    assert client.get("/").status_code == 302
    response = client.post("/accounts/login/", {"username": person.username, "password": PASSWORD})
    assert response.status_code == 302
    assert person.username in client.get("/").content.decode()
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302
