"""What each log line is about: the user, the image, the version, the deployment, the machine.

A log shipper can then find every line of one deployment or one user without
parsing messages. The context is kept in a ``ContextVar`` (one per thread of a
gunicorn worker, one per task of a Celery worker) and copied onto every record
by :class:`ContextFilter`, which the console handler of
``baas_site.observability.logging_config`` carries:

* for a request, :class:`LogContextMiddleware` takes the URL's arguments
  (``image_id``/``image_uuid`` → ``image``, ``deployment_id`` → ``deployment``,
  ``mac`` → ``machine``, ``setup_id``/``setup_uuid`` → ``setup``…) when the view
  is chosen, and the user when a record is written: DRF authenticates inside the
  view (a token, an agent's token), so the user is read from the request then —
  never looked up for a log line (a user not loaded yet is not named);
* for a Celery task, ``task_prerun``/``task_postrun`` bind the task's arguments
  with the same names (``version_id`` → ``version``, ``machine_id`` →
  ``machine``, ``mount_id`` → ``mount``, ``job_id`` → ``import``…).

JSON lines get the keys that are known (``user``, ``image``, ``deployment``…);
text lines end with them in brackets: ``… [user=ada image=1f0c…]``, the lines of a
text-format Celery worker too (:func:`celery_handlers`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import SimpleLazyObject, empty

# The names arguments have in URLs and tasks, and the key a log line shows them under.
KEYS = {
    "username": "owner",
    "image_id": "image",
    "image_uuid": "image",
    "image_name": "image_name",
    "number": "number",
    "version_id": "version",
    "setup_id": "setup",
    "setup_uuid": "setup",
    "deployment_id": "deployment",
    "attempt": "attempt",
    "mac": "machine",
    "machine_id": "machine",
    "mount_id": "mount",
    "job_id": "import",
}
# The order keys are shown in, in text lines.
ORDER = ("user", *dict.fromkeys(KEYS.values()))

_fields: ContextVar[Mapping[str, str] | None] = ContextVar("baas_log_fields", default=None)
_request: ContextVar[HttpRequest | None] = ContextVar("baas_log_request", default=None)


def fields_of(arguments: Mapping[str, Any]) -> dict[str, str]:
    """The log fields named by ``arguments`` (a URL's or a task's), as text."""
    return {KEYS[k]: str(v) for k, v in arguments.items() if k in KEYS and v is not None}


def current() -> dict[str, str]:
    """The fields of the request or task running in this context (the user included)."""
    known = dict(_fields.get() or {})
    request = _request.get()
    if request is not None:
        user = _user_of(request)
        if user:
            known["user"] = user
    return known


@contextmanager
def bound(**arguments: Any) -> Iterator[None]:
    """Add the fields ``arguments`` name for the duration of the block."""
    token = _fields.set({**(_fields.get() or {}), **fields_of(arguments)})
    try:
        yield
    finally:
        _fields.reset(token)


def _user_of(request: HttpRequest) -> str:
    """The request's user if it is known already: DRF's (set on the request once
    authenticated), or the session's once something loaded it. Never a query."""
    user = request.__dict__.get("user")
    if isinstance(user, SimpleLazyObject):
        user = user.__dict__.get("_wrapped", empty)
    if user is empty or user is None or not getattr(user, "is_authenticated", False):
        return ""
    if getattr(user, "is_agent", False):
        return f"agent of deployment {user.deployment.pk}"
    return str(getattr(user, "username", ""))


class ContextFilter(logging.Filter):
    """Copies the current fields onto each record (``record.context`` for text lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        known = current()
        for key, value in known.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        shown = " ".join(f"{key}={known[key]}" for key in ORDER if key in known)
        record.context = f" [{shown}]" if shown else ""
        return True


class LogContextMiddleware:
    """Binds a request's URL arguments and (once known) its user to its log lines."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request_token = _request.set(request)
        fields_token = _fields.set(None)
        try:
            return self.get_response(request)
        finally:
            _fields.reset(fields_token)
            _request.reset(request_token)

    def process_view(
        self, request: HttpRequest, view: Callable, args: Any, kwargs: Mapping[str, Any]
    ) -> None:
        _fields.set(fields_of(kwargs))


# --- Celery: each task's arguments ---------------------------------------------------------

_task_tokens: dict[str, Token] = {}


def task_started(task_id: str, task: Any, args: Any, kwargs: Any, **_: Any) -> None:
    try:
        arguments = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
        named = dict(arguments.arguments)
    except (TypeError, ValueError):
        named = dict(kwargs or {})
    _task_tokens[task_id] = _fields.set(fields_of(named))


def task_ended(task_id: str, **_: Any) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        _fields.reset(token)


def celery_handlers(logger: logging.Logger, **_: Any) -> None:
    """A text-format worker logs through the handlers Celery installs (its own line format,
    ``CELERY_WORKER_LOG_FORMAT`` and ``…_TASK_LOG_FORMAT`` in the settings, which end with
    the fields): each gets the filter that puts them on its records."""
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


def connect_celery() -> None:
    """Bind each task's arguments to the lines it logs (called by ``baas_site.celery``)."""
    from celery import signals

    signals.task_prerun.connect(task_started, weak=False)
    signals.task_postrun.connect(task_ended, weak=False)
    signals.after_setup_logger.connect(celery_handlers, weak=False)
    signals.after_setup_task_logger.connect(celery_handlers, weak=False)
