"""Token scopes: read, write and admin, enforced for every API view, and minting no wider."""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from accounts import scopes
from accounts.authentication import BearerTokenAuthentication
from accounts.models import AccessToken, Role
from accounts.permissions import TokenScopes
from tests.accounts.conftest import client_with_scopes
from tests.accounts.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def create_setup(client):
    return client.post(
        f"/api/user/{client.user.username}/image_setup", {"name": "lab"}, format="json"
    )


def test_a_read_token_reads_but_changes_nothing(user):
    client = client_with_scopes(user, ["read"])
    assert client.get("/api/user/me").status_code == 200
    response = create_setup(client)
    assert response.status_code == 403
    assert "do not include 'write'" in response.json()["detail"]


def test_a_write_token_works_but_cannot_administer_the_account(user):
    client = client_with_scopes(user, ["read", "write"])
    assert create_setup(client).status_code == 201
    changed = client.patch(f"/api/user/{user.username}", {"name": "New"}, format="json")
    assert changed.status_code == 403
    assert "'admin'" in changed.json()["detail"]
    minted = client.post(f"/api/user/{user.username}/tokens", {"name": "x"}, format="json")
    assert minted.status_code == 403
    assert client.delete(f"/api/user/{user.username}").status_code == 403
    user.refresh_from_db()
    assert user.display_name != "New"
    assert AccessToken.objects.filter(user=user).count() == 1


def test_an_administrators_read_token_cannot_register_a_machine(administrator):
    client = client_with_scopes(administrator, ["read"])
    assert client.get("/api/machines").status_code == 200
    response = client.post(
        "/api/machine", {"name": "n1", "mac": "52:54:00:00:00:01"}, format="json"
    )
    assert response.status_code == 403
    assert "'write'" in response.json()["detail"]


def test_an_administrators_write_token_cannot_create_users(administrator):
    client = client_with_scopes(administrator, ["read", "write"])
    payload = {"username": "eve", "email": "eve@example.org"}
    assert client.post("/api/user", payload, format="json").status_code == 403
    admin_token = client_with_scopes(administrator, ["admin"])
    assert admin_token.post("/api/user", payload, format="json").status_code == 201


def test_an_admin_scope_does_not_widen_the_role(user, other_user):
    client = client_with_scopes(user, scopes.ALL)
    payload = {"username": "eve", "email": "eve@example.org"}
    assert client.post("/api/user", payload, format="json").status_code == 403
    assert client.patch(f"/api/user/{user.username}", {"role": "administrator"}).status_code == 403


def test_a_token_mints_tokens_only_with_scopes_it_has(user):
    admin_only = client_with_scopes(user, ["admin"])
    url = f"/api/user/{user.username}/tokens"
    wider = admin_only.post(url, {"name": "x", "scopes": ["read", "write"]}, format="json")
    assert wider.status_code == 403
    assert "only with scopes it has itself" in wider.json()["detail"]
    same = admin_only.post(url, {"name": "y", "scopes": ["admin"]}, format="json")
    assert (same.status_code, same.json()["scopes"]) == (201, ["admin"])
    assert not AccessToken.objects.filter(name="x").exists()


def test_new_tokens_default_to_read_and_write(user):
    client = client_with_scopes(user, scopes.ALL)
    created = client.post(f"/api/user/{user.username}/tokens", {"name": "ci"}, format="json")
    assert created.json()["scopes"] == ["read", "write"]
    assert AccessToken.objects.get(pk=created.json()["id"]).scope_list == ("read", "write")


def test_a_password_gets_a_token_of_any_scopes(user, anon_client):
    payload = {"username": user.username, "password": PASSWORD, "name": "cli"}
    plain = anon_client.post("/api/auth/token", payload, format="json")
    assert plain.json()["scopes"] == ["read", "write"]
    full = anon_client.post(
        "/api/auth/token", {**payload, "scopes": ["read", "write", "admin"]}, format="json"
    )
    assert full.json()["scopes"] == ["read", "write", "admin"]


def test_an_unknown_scope_is_a_clear_400(user, anon_client):
    payload = {"username": user.username, "password": PASSWORD, "scopes": ["root"]}
    response = anon_client.post("/api/auth/token", payload, format="json")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("scopes:")


def test_the_token_page_chooses_the_scopes(signed_in, user):
    page = signed_in.get(reverse("tokens"))
    assert b'value="read" id="id_scopes_0" checked' in page.content
    signed_in.post(reverse("tokens"), {"name": "viewer", "scopes": ["read"]})
    assert AccessToken.objects.get(user=user, name="viewer").scopes == "read"
    refused = signed_in.post(reverse("tokens"), {"name": "none"})
    assert "Choose at least one scope." in refused.context["form"].errors["scopes"]
    listed = signed_in.get(reverse("tokens"))
    assert b"<td>read</td>" in listed.content


def test_a_session_is_not_limited_by_scopes(signed_in, user):
    signed_in.user = user
    assert create_setup(signed_in).status_code == 201


def _api_views(resolver: URLResolver | None = None):
    for entry in (resolver or get_resolver()).url_patterns:
        if isinstance(entry, URLResolver):
            yield from _api_views(entry)
        elif isinstance(entry, URLPattern):
            view = getattr(entry.callback, "view_class", None) or getattr(
                entry.callback, "cls", None
            )
            if isinstance(view, type) and issubclass(view, APIView):
                yield view


def test_every_view_a_personal_token_reaches_checks_its_scopes():
    views = list(_api_views())
    assert len(views) > 20
    for view in views:
        instance = view()
        if not any(isinstance(a, BearerTokenAuthentication) for a in instance.get_authenticators()):
            continue
        if all(isinstance(p, AllowAny) for p in instance.get_permissions()):
            continue  # public anyway: a token adds nothing
        assert any(isinstance(p, TokenScopes) for p in instance.get_permissions()), view


def test_a_moderators_token_keeps_its_role_limits(db):
    moderator = UserFactory(role=Role.MODERATOR)
    client = client_with_scopes(moderator, scopes.ALL)
    assert client.get("/api/users").status_code == 200
    assert client.post("/api/user", {"username": "x", "email": "x@example.org"}).status_code == 403


def test_tokens_made_before_scopes_keep_every_scope(transactional_db):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", "0002_quota")])
    old_apps = executor.loader.project_state([("accounts", "0002_quota")]).apps
    person = old_apps.get_model("accounts", "User").objects.create(
        username="old", email="old@example.org", password="!"
    )
    old_apps.get_model("accounts", "AccessToken").objects.create(
        user=person, name="old", digest="a" * 64, hint="baas_x"
    )
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert AccessToken.objects.get(name="old").scope_list == ("read", "write", "admin")
