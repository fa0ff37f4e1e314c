from __future__ import annotations

import pytest
from django.http import HttpRequest

from accounts.models import AuditEvent, Role, User
from tests.accounts.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_an_administrator_creates_a_user_who_can_then_sign_in(admin_client_api, client):
    response = admin_client_api.post(
        "/api/user",
        {
            "username": "grace",
            "email": "grace@example.org",
            "name": "Grace Hopper",
            "role": "moderator",
            "password": "a long enough password",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["role"] == "moderator"
    assert "password" not in response.json()
    assert client.login(request=HttpRequest(), username="grace", password="a long enough password")


def test_a_user_cannot_create_users(user_client):
    response = user_client.post(
        "/api/user", {"username": "x", "email": "x@example.org"}, format="json"
    )
    assert response.status_code == 403
    assert not User.objects.filter(username="x").exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"username": "bad name!", "email": "a@example.org"}, "username"),
        ({"username": "me", "email": "a@example.org"}, "username"),
        ({"username": "ok", "email": "not-an-email"}, "email"),
        ({"username": "ok", "email": "a@example.org", "role": "emperor"}, "role"),
    ],
)
def test_bad_user_input_is_a_clear_400(admin_client_api, payload, field):
    response = admin_client_api.post("/api/user", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert response.json()["detail"].startswith(field)


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("password1", "This password is too common."),
        ("84310592716", "This password is entirely numeric."),
        ("ada@example.org", "The password is too similar to the email."),
    ],
)
def test_a_weak_password_is_refused_with_the_reason(
    admin_client_api, user_client, user, password, why
):
    payload = {"username": "ada", "email": "ada@example.org", "password": password}
    response = admin_client_api.post("/api/user", payload, format="json")
    assert response.status_code == 400
    assert why in response.json()["errors"]["password"]
    assert not type(user).objects.filter(username="ada").exists()

    # The same rules when a password changes (an email of the user's own, as above:
    # the factory's numbered emails are less or more similar depending on the count).
    type(user).objects.filter(pk=user.pk).update(email="ada@example.org")
    change = {"password": password, "current_password": "unused"}
    response = admin_client_api.patch(f"/api/user/{user.username}", change, format="json")
    assert response.status_code == 400
    assert why in response.json()["errors"]["password"]
    user.refresh_from_db()
    assert not user.check_password(password)


def test_emails_are_unique_whatever_their_case(admin_client_api, user):
    response = admin_client_api.post(
        "/api/user", {"username": "dup", "email": user.email.upper()}, format="json"
    )
    assert response.status_code == 400
    assert "email" in response.json()["errors"]


def test_every_signed_in_user_lists_users_without_emails(user_client, other_user):
    listing = user_client.get("/api/users").json()["results"]
    assert other_user.username in {u["username"] for u in listing}
    assert all("email" not in u for u in listing)


def test_me_is_the_user_behind_the_token(user_client, user):
    assert user_client.get("/api/user/me").json()["username"] == user.username


def test_a_user_reads_and_changes_themselves(user_client, user):
    assert user_client.get(f"/api/user/{user.username}").status_code == 200
    response = user_client.patch(f"/api/user/{user.username}", {"name": "New"}, format="json")
    assert response.status_code == 200
    user.refresh_from_db()
    assert user.display_name == "New"


def test_another_users_profile_answers_404(user_client, other_user):
    assert user_client.get(f"/api/user/{other_user.username}").status_code == 404
    response = user_client.patch(f"/api/user/{other_user.username}", {"name": "x"}, format="json")
    assert response.status_code == 404
    assert user_client.delete(f"/api/user/{other_user.username}").status_code == 404
    assert User.objects.filter(pk=other_user.pk).exists()


def test_a_malformed_username_in_a_path_is_400(user_client):
    assert user_client.get("/api/user/bad%20name").status_code == 400
    assert user_client.get("/api/user/nobody").status_code == 404


def test_a_user_cannot_raise_their_own_role(user_client, user):
    response = user_client.patch(
        f"/api/user/{user.username}", {"role": "administrator"}, format="json"
    )
    assert response.status_code == 403
    user.refresh_from_db()
    assert user.role == Role.USER


def test_an_administrator_changes_a_role_and_it_is_recorded(admin_client_api, administrator, user):
    response = admin_client_api.patch(
        f"/api/user/{user.username}", {"role": "moderator"}, format="json"
    )
    assert response.status_code == 200
    user.refresh_from_db()
    assert user.role == Role.MODERATOR
    event = AuditEvent.objects.get(action="user.role", target_id=str(user.pk))
    assert event.actor == administrator
    assert event.data == {"old": "user", "new": "moderator"}


def test_an_administrator_deletes_a_user(admin_client_api, user):
    assert admin_client_api.delete(f"/api/user/{user.username}").status_code == 204
    assert not User.objects.filter(pk=user.pk).exists()


def test_errors_under_api_are_json(user_client):
    response = user_client.get("/api/no/such/route")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_the_schema_documents_every_route(user_client):
    response = user_client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for route in [
        "/api/auth/token",
        "/api/user",
        "/api/users",
        "/api/user/me",
        "/api/user/{username}",
        "/api/user/{username}/tokens",
    ]:
        assert route in paths
    created = paths["/api/user/{username}/tokens"]["post"]["responses"]["201"]
    ref = created["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "token" in response.json()["components"]["schemas"][ref]["properties"]


def test_the_api_docs_page_loads_its_assets_locally(client):
    UserFactory(username="viewer")
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html
    assert "cdn." not in html and "unpkg" not in html
