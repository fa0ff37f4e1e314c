"""The token pages and the home page, through Django's test client."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AccessToken, token_digest
from accounts.services import token_create
from tests.catalogue.factories import ImageFactory, ImageSetupFactory, VersionFactory
from tests.flashing.factories import DeploymentFactory, LeaseFactory, MachineFactory

pytestmark = pytest.mark.django_db


def test_anonymous_visitors_are_sent_to_sign_in(client, user):
    token, _ = token_create(actor=user, user=user, name="t")
    for url in (reverse("home"), reverse("tokens")):
        assert client.get(url)["Location"].startswith(reverse("login"))
    response = client.post(reverse("token-revoke", args=[token.pk]))
    assert response["Location"].startswith(reverse("login"))
    assert AccessToken.objects.filter(pk=token.pk).exists()


def test_a_new_token_is_shown_once_and_only_its_digest_is_kept(signed_in, user):
    response = signed_in.post(
        reverse("tokens"), {"name": "laptop", "scopes": ["read", "write"]}, follow=True
    )
    assert response.redirect_chain == [(reverse("tokens"), 302)]
    secret = response.context["new_token"]["secret"]
    token = AccessToken.objects.get(user=user, name="laptop")
    assert token.digest == token_digest(secret)
    assert secret.encode() in response.content
    assert "no-store" in response["Cache-Control"]
    again = signed_in.get(reverse("tokens"))
    assert AccessToken.objects.filter(user=user).count() == 1
    assert secret.encode() not in again.content
    assert token.hint.encode() in again.content


def test_a_token_can_expire_on_a_future_day(signed_in, user):
    day = timezone.localdate() + timedelta(days=30)
    signed_in.post(
        reverse("tokens"), {"name": "ci", "expires_on": day.isoformat(), "scopes": ["read"]}
    )
    token = AccessToken.objects.get(user=user)
    assert timezone.localtime(token.expires_at).date() == day


def test_the_token_form_shows_errors(signed_in):
    response = signed_in.post(
        reverse("tokens"),
        {"name": "", "expires_on": timezone.localdate().isoformat(), "scopes": ["read"]},
    )
    errors = response.context["form"].errors
    assert set(errors) == {"name", "expires_on"}
    assert "after today" in errors["expires_on"][0]
    assert not AccessToken.objects.exists()


def test_the_list_shows_only_my_tokens(signed_in, user, other_user):
    token_create(actor=user, user=user, name="mine")
    token_create(actor=other_user, user=other_user, name="theirs")
    response = signed_in.get(reverse("tokens"))
    assert [t.name for t in response.context["tokens"]] == ["mine"]


def test_a_token_is_revoked_by_post_only(signed_in, user):
    token, secret = token_create(actor=user, user=user, name="old")
    url = reverse("token-revoke", args=[token.pk])
    assert signed_in.get(url).status_code == 405
    assert signed_in.post(url)["Location"] == reverse("tokens")
    assert not AccessToken.objects.filter(pk=token.pk).exists()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get(reverse("user-me")).status_code == 401


def test_another_users_token_cannot_be_revoked(signed_in, other_user):
    token, _ = token_create(actor=other_user, user=other_user, name="theirs")
    assert signed_in.post(reverse("token-revoke", args=[token.pk])).status_code == 404
    assert AccessToken.objects.filter(pk=token.pk).exists()


def test_home_shows_my_images_setups_leases_and_unfinished_deployments(signed_in, user, other_user):
    image = ImageFactory(owner=user, name="my-image")
    VersionFactory(image=image, number=0)
    ImageFactory(owner=other_user, name="not-mine")
    setup = ImageSetupFactory(owner=user, name="my-setup")
    machine = MachineFactory(name="rack-1")
    LeaseFactory(machine=machine, user=user)
    LeaseFactory(machine=MachineFactory(name="old-one"), user=user, ended_at=timezone.now())
    running = DeploymentFactory(machine=machine, setup=setup, requested_by=user, state="writing")
    DeploymentFactory(machine=machine, setup=setup, requested_by=user, state="done")
    html = signed_in.get(reverse("home")).content.decode()
    assert reverse("image", args=[image.pk]) in html
    assert "not-mine" not in html
    assert reverse("setup", args=[setup.pk]) in html
    assert f'href="/machines/{machine.mac}/">rack-1' in html
    assert "old-one" not in html
    assert f'href="/deployments/{running.pk}/"' in html
    assert html.count('href="/deployments/') == 1


def test_home_needs_the_same_queries_however_much_i_have(signed_in, user):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert signed_in.get(reverse("home")).status_code == 200
        return len(queries)

    def add_some() -> None:
        VersionFactory(image=ImageFactory(owner=user), number=0)
        setup = ImageSetupFactory(owner=user)
        lease = LeaseFactory(user=user)
        DeploymentFactory(machine=lease.machine, setup=setup, requested_by=user)

    add_some()
    few = count()
    for _ in range(5):
        add_some()
    assert count() == few
