"""The two ways a command fails, and their exit statuses."""

from __future__ import annotations

from typing import Any

REFUSED = 1  # the server said no: its message is printed
LOCAL = 2  # something on this side: a usage error, a file, the network


class CliError(Exception):
    exit_code = LOCAL


class LocalError(CliError):
    """Something on this side went wrong; the message says what."""


class ApiError(CliError):
    """The server refused: ``status`` and its message (``detail`` and field errors)."""

    exit_code = REFUSED

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def message_of(status: int, body: Any, fallback: str) -> str:
    """One sentence from a JSON error: its ``detail``, then each field's messages."""
    if not isinstance(body, dict):
        return f"{status}: {fallback.strip()[:300] or 'no message'}"
    parts = [str(body["detail"])] if body.get("detail") else []
    errors = body.get("errors") if isinstance(body.get("errors"), dict) else None
    fields = errors or {k: v for k, v in body.items() if k != "detail"}
    for field, problems in fields.items():
        text = " ".join(map(str, problems)) if isinstance(problems, list) else str(problems)
        if f"{field}: {text}" not in parts and text not in parts:
            parts.append(f"{field}: {text}")
    return f"{status}: " + (" ".join(parts) or fallback.strip()[:300])
