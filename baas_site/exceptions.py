"""The kinds of refusal a service can raise, with no web framework in sight.

Services and selectors raise these (or an app's own subclass, in
``<app>/exceptions.py``), never an HTTP exception: whether the caller is the
API, a page, the admin, a Celery task or a test, it gets a domain error, and
``baas_site.errors`` alone turns one into an HTTP answer or a page message.

``detail`` is what a person reads: a sentence, a list of them, or a dict of
field name to sentences (for ``Invalid``, the per-field messages of a form or
an API body); a dict also suits an error that carries data beside its
``detail`` sentence (``accounts.exceptions.UserOwnsThings``). ``code`` is a
short machine-readable name. ``retry_after`` (seconds) tells a client when
asking again may succeed.

This module imports nothing but the standard library, so every app (and
anything below the apps) may import it.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A refusal a person can act on. Subclass a kind below, not this class."""

    default_detail: Any = "The request was refused."
    default_code: str = "error"
    retry_after: int | None = None

    def __init__(self, detail: Any = None, code: str | None = None) -> None:
        self.detail = self.default_detail if detail is None else detail
        self.code = code or self.default_code
        super().__init__(self.detail)

    def __str__(self) -> str:
        return " ".join(messages_of(self.detail))


def messages_of(detail: Any) -> list[str]:
    """Every sentence in a ``detail`` (a string, a list or a dict of them), flattened."""
    if isinstance(detail, list | tuple):
        return [m for item in detail for m in messages_of(item)]
    if isinstance(detail, dict):
        return [m for value in detail.values() for m in messages_of(value)]
    return [str(detail)]


class Invalid(DomainError):
    """A field or value of the input is wrong; ``detail`` may name the fields."""

    default_detail = "Invalid input."
    default_code = "invalid"


class Unusable(DomainError):
    """The input as a whole cannot be used (bytes that are not what they claim, cut short)."""

    default_detail = "The request was refused."
    default_code = "unusable"


class NotAuthenticated(DomainError):
    """Who asks is not known (no or a wrong credential)."""

    default_detail = "Authentication credentials were not provided."
    default_code = "not_authenticated"


class Forbidden(DomainError):
    """The actor may see the thing but not do this to it."""

    default_detail = "You do not have permission to perform this action."
    default_code = "permission_denied"


class NotFound(DomainError):
    """No such thing, or not the actor's to see: the two look the same on purpose."""

    default_detail = "Not found."
    default_code = "not_found"


class Conflict(DomainError):
    """The request contradicts the current state of the thing."""

    default_detail = "This conflicts with the current state."
    default_code = "conflict"


class Gone(DomainError):
    """The thing existed but is over (a finished deployment, an ended lease)."""

    default_detail = "This is gone."
    default_code = "gone"


class LengthRequired(DomainError):
    """The size of the input must be known before it is read."""

    default_detail = "Send the request with a Content-Length."
    default_code = "length_required"


class TooLarge(DomainError):
    """The input is larger than this server accepts."""

    default_detail = "This is larger than the server accepts."
    default_code = "too_large"


class TooManyAttempts(DomainError):
    """Too many tries in too short a time; ``retry_after`` says how long to wait."""

    default_detail = "Too many attempts; wait before trying again."
    default_code = "throttled"


class StorageFull(DomainError):
    """There is no room left to store the input; nothing was stored."""

    default_detail = "The store is full; nothing was stored."
    default_code = "storage_full"
