"""The accounts app's domain errors, each a kind of ``baas_site.exceptions``.

Services and selectors raise them; ``baas_site.errors`` alone says what each
kind answers over HTTP and how a page shows it.
"""

from __future__ import annotations

from typing import Any

from baas_site.exceptions import Conflict, Forbidden, Invalid, NotFound, TooManyAttempts


class InvalidInput(Invalid):
    """A field of a request about users or tokens is wrong."""


class NotAllowed(Forbidden):
    """The actor is not allowed this change (a role, another user's password)."""


class UserNotFound(NotFound):
    """No such user, or not the actor's to manage: the two look the same on purpose."""

    default_detail = "No such user, or not yours to manage."


class TokenNotFound(NotFound):
    default_detail = "No such token."


class UserOwnsThings(Conflict):
    """A user who still owns or holds something is not deleted; ``owns`` lists it."""

    default_code = "user_owns_things"

    def __init__(self, user: Any, owns: list[str]) -> None:
        message = (
            f"{user.username} still owns or holds: {'; '.join(owns)}. Delete or hand these "
            "over first, or let an administrator delete the user with "
            "?transfer_to=<administrator's username> to hand them all to that administrator "
            "(a held lease is ended and its machine reset)."
        )
        self.owns = owns
        super().__init__({"detail": message, "owns": owns})


class LoginLocked(TooManyAttempts):
    """A lock-out after too many failed sign-ins, with the wait in words and in seconds."""

    default_code = "locked_out"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
