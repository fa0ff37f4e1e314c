"""Shared fixtures: API clients per role, a private image root per test."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts import scopes
from accounts.models import Role
from accounts.services import token_create
from catalogue.storage import MAP_SUFFIX, get_storage
from tests.accounts.factories import UserFactory

pytest_plugins = ["tests.celery_worker", "tests.imports.fixtures"]


@pytest.fixture(scope="session", autouse=True)
def _static_files(django_db_blocker):
    """Static files collected once, as in production (whitenoise serves them)."""
    call_command("collectstatic", "--noinput", verbosity=0)


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # The production hasher is slow on purpose; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _disk_root(settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    settings.BAAS_DISK_ROOT = root
    return root


@pytest.fixture(autouse=True)
def _boot_cache(settings, tmp_path_factory):
    settings.BAAS_BOOT_CACHE_DIR = tmp_path_factory.mktemp("boot-cache")


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()  # throttles count in the cache
    yield
    cache.clear()


@pytest.fixture
def disk_root(settings):
    return settings.BAAS_DISK_ROOT


def version_files(image) -> list[Path]:
    """The files of ``image``'s versions on disk, without the small data maps beside them."""
    directory = get_storage().image_dir(image.uuid)
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if not p.name.endswith(MAP_SUFFIX))


def allocated(image) -> int:
    """What ``du`` says of ``image``'s version files: the bytes allocated to them."""
    return sum(p.stat().st_blocks * 512 for p in version_files(image))


def client_for(user, wanted: Iterable[str] = scopes.DEFAULT) -> APIClient:
    """An API client authenticated the way scripts are: a bearer token with ``wanted`` scopes."""
    client = APIClient()
    if user is not None:
        _, secret = token_create(actor=user, user=user, name="tests", scopes_wanted=wanted)
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.user = user
    return client


@pytest.fixture
def user(db):
    return UserFactory(role=Role.USER)


@pytest.fixture
def other_user(db):
    return UserFactory(role=Role.USER)


@pytest.fixture
def moderator(db):
    return UserFactory(role=Role.MODERATOR)


@pytest.fixture
def administrator(db):
    return UserFactory(role=Role.ADMINISTRATOR)


@pytest.fixture
def signed_in(client, user):
    """Django's test client, signed in as ``user`` (for pages)."""
    client.force_login(user)
    return client


@pytest.fixture
def admin_web(client, administrator):
    """Django's test client, signed in as an administrator (for pages and the admin)."""
    client.force_login(administrator)
    return client


@pytest.fixture
def anon_client():
    return APIClient()


@pytest.fixture
def client_scopes() -> tuple[str, ...]:
    """The scopes of the API clients' tokens (``user_client``…): what new tokens get."""
    return scopes.DEFAULT


@pytest.fixture
def user_client(user, client_scopes):
    return client_for(user, client_scopes)


@pytest.fixture
def other_client(other_user, client_scopes):
    return client_for(other_user, client_scopes)


@pytest.fixture
def moderator_client(moderator, client_scopes):
    return client_for(moderator, client_scopes)


@pytest.fixture
def admin_client_api(administrator, client_scopes):
    return client_for(administrator, client_scopes)
