from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AccessToken, Role, token_digest
from tests.accounts.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_a_script_gets_its_first_token_with_a_password_and_uses_it():
    user = UserFactory(username="ada")
    response = APIClient().post(
        "/api/auth/token",
        {"username": "ada", "password": PASSWORD, "name": "laptop"},
        format="json",
    )
    assert response.status_code == 201, response.content
    secret = response.json()["token"]
    assert response.json()["name"] == "laptop"
    me = bearer(secret).get("/api/user/me")
    assert me.status_code == 200
    assert me.json()["username"] == user.username


def test_a_wrong_password_gets_401_and_no_token():
    UserFactory(username="ada")
    response = APIClient().post(
        "/api/auth/token", {"username": "ada", "password": "nope", "name": "x"}, format="json"
    )
    assert response.status_code == 401
    assert "Wrong username or password" in response.json()["detail"]
    assert AccessToken.objects.count() == 0


def test_password_guessing_is_throttled():
    UserFactory(username="ada")
    codes = [
        APIClient()
        .post("/api/auth/token", {"username": "ada", "password": "guess"}, format="json")
        .status_code
        for _ in range(12)
    ]
    assert codes[:10] == [401] * 10
    assert codes[-1] == 429


def test_only_a_hash_of_the_token_is_stored(user_client, user):
    response = user_client.post(f"/api/user/{user.username}/tokens", {"name": "ci"}, format="json")
    assert response.status_code == 201
    secret = response.json()["token"]
    row = AccessToken.objects.get(pk=response.json()["id"])
    assert row.digest == token_digest(secret)
    stored = [str(v) for v in AccessToken.objects.filter(pk=row.pk).values().get().values()]
    assert secret not in stored
    assert all(secret not in value for value in stored)


def test_the_list_shows_no_secrets(user_client, user):
    user_client.post(f"/api/user/{user.username}/tokens", {"name": "ci"}, format="json")
    listing = user_client.get(f"/api/user/{user.username}/tokens").json()["results"]
    assert {t["name"] for t in listing} == {"tests", "ci"}
    assert all("token" not in t and "digest" not in t for t in listing)


def test_a_revoked_token_gets_401(user_client, user):
    created = user_client.post(f"/api/user/{user.username}/tokens", {"name": "tmp"}, format="json")
    secret, token_id = created.json()["token"], created.json()["id"]
    assert bearer(secret).get("/api/user/me").status_code == 200
    assert user_client.delete(f"/api/user/{user.username}/tokens/{token_id}").status_code == 204
    response = bearer(secret).get("/api/user/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_expired_token_gets_401(user_client, user):
    expires = timezone.now() + timedelta(hours=1)
    created = user_client.post(
        f"/api/user/{user.username}/tokens",
        {"name": "short", "expires": expires.isoformat()},
        format="json",
    )
    assert created.status_code == 201
    AccessToken.objects.filter(pk=created.json()["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = bearer(created.json()["token"]).get("/api/user/me")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_an_expiry_in_the_past_is_refused(user_client, user):
    response = user_client.post(
        f"/api/user/{user.username}/tokens",
        {"name": "old", "expires": "2001-01-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 400
    assert "future" in response.json()["detail"]


def test_a_garbage_token_gets_401():
    assert bearer("baas_not-a-real-token").get("/api/user/me").status_code == 401


def test_no_credentials_get_401_not_403():
    response = APIClient().get("/api/user/me")
    assert response.status_code == 401


def test_a_user_cannot_list_or_revoke_another_users_tokens(user_client, other_user):
    other_token = AccessToken.objects.create(
        user=other_user, name="theirs", digest="0" * 64, hint="baas_0000"
    )
    assert user_client.get(f"/api/user/{other_user.username}/tokens").status_code == 404
    response = user_client.delete(f"/api/user/{other_user.username}/tokens/{other_token.pk}")
    assert response.status_code == 404
    assert AccessToken.objects.filter(pk=other_token.pk).exists()


def test_an_administrator_creates_a_token_for_a_user(admin_client_api, user):
    response = admin_client_api.post(
        f"/api/user/{user.username}/tokens", {"name": "given"}, format="json"
    )
    assert response.status_code == 201
    assert bearer(response.json()["token"]).get("/api/user/me").json()["username"] == user.username


def test_a_deactivated_users_tokens_stop_working():
    user = UserFactory(role=Role.USER)
    from accounts.services import token_create

    _, secret = token_create(actor=user, user=user, name="x")
    user.is_active = False
    user.save()
    assert bearer(secret).get("/api/user/me").status_code == 401


def test_the_schema_says_null_wherever_the_answers_send_null(user_client, user):
    """A token never used and never expiring answers null; the schema must allow it."""
    user_client.post(f"/api/user/{user.username}/tokens", {"name": "ci"}, format="json")
    schema = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    components = schema["components"]["schemas"]
    answers = {
        "TokenOutput": user_client.get(f"/api/user/{user.username}/tokens").json()["results"][0],
        "UserOutput": user_client.get("/api/user/me").json(),
    }
    nulls = 0
    for component, body in answers.items():
        properties = components[component]["properties"]
        for field, value in body.items():
            if value is None:
                nulls += 1
                assert properties[field].get("nullable") is True, (component, field)
    assert nulls >= 3  # expires, last_used, storage_quota
