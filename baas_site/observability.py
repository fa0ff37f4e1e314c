"""Logs and error reports, configured from the environment by ``baas_site.settings``.

* ``LOG_FORMAT=json`` writes one JSON object per line (time, level, logger,
  message, the exception's traceback when there is one, and what the line is
  about: ``user``, ``image``, ``deployment``… from ``baas_site.logcontext``) for
  a log shipper; ``text`` (the default) writes lines for people, the same
  fields in brackets at the end. The web workers, the Celery workers and beat
  all log through this configuration. (``BAAS_LOG_FORMAT``, its first name,
  is still read when ``LOG_FORMAT`` is not set.)
* ``SENTRY_DSN`` turns on error reports to Sentry (or any service that speaks its
  protocol): unhandled exceptions in views and tasks, and ERROR log records.
  No personal data is sent (``send_default_pii`` off: no cookies, no
  Authorization header, no user's address or name), request bodies are never
  sent (an upload is a disk image), and tracing is off unless
  ``SENTRY_TRACES_SAMPLE_RATE`` says otherwise.
"""

from __future__ import annotations

from typing import Any


def logging_config(*, level: str, fmt: str) -> dict[str, Any]:
    if fmt not in ("text", "json"):
        raise ValueError(f"LOG_FORMAT must be text or json, not {fmt!r}")
    formatters: dict[str, Any] = {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    }
    if fmt == "json":  # the library's own attributes, and the text lines' summary
        from pythonjsonlogger.core import RESERVED_ATTRS

        formatters["json"]["reserved_attrs"] = [*RESERVED_ATTRS, "context"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {fmt: formatters[fmt]},  # the other's library need not be there
        "filters": {"context": {"()": "baas_site.logcontext.ContextFilter"}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": fmt, "filters": ["context"]}
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.request": {"level": "ERROR"}},
    }


def error_reporting(*, dsn: str, environment: str, release: str, traces: float) -> None:
    """Start the Sentry client when a DSN is set (its Django and Celery integrations
    switch themselves on)."""
    if not dsn:
        return
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        send_default_pii=False,
        max_request_body_size="never",
        traces_sample_rate=traces,
    )
