"""Reads for users and tokens, with the permission checks they need."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet

from accounts import rules
from accounts.exceptions import InvalidInput, TokenNotFound, UserNotFound
from accounts.models import AccessToken, User, username_validator
from accounts.rules import Actor


def username_check(username: str) -> str:
    """400 for a name that cannot be a username."""
    try:
        username_validator(username)
    except DjangoValidationError as exc:
        raise InvalidInput({"username": exc.messages}) from exc
    return username


def user_list() -> QuerySet[User]:
    return User.objects.filter(is_active=True).order_by("username")


def user_get_managed(*, actor: Actor, username: str) -> User:
    """The user named ``username`` if ``actor`` may manage them; 404 otherwise.

    404 rather than 403, so nobody learns more than the public user list says.
    """
    user = User.objects.filter(username=username_check(username)).first()
    if user is None or not rules.can_manage_user(actor, user):
        raise UserNotFound()
    return user


def user_get_heir(*, username: str) -> User:
    """The active administrator named ``username``, to hand a deleted user's things to; 400."""
    user = User.objects.filter(username=username, is_active=True).first()
    if user is None or not rules.is_administrator(user):
        raise InvalidInput({"transfer_to": [f"{username!r} is not an active administrator."]})
    return user


def token_list(*, user: User) -> QuerySet[AccessToken]:
    return AccessToken.objects.filter(user=user)


def token_get(*, user: User, token_id: int) -> AccessToken:
    token = AccessToken.objects.filter(user=user, pk=token_id).first()
    if token is None:
        raise TokenNotFound()
    return token
