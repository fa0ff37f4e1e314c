"""The OpenAPI schema's shared error answer (a drf-spectacular post-processing hook)."""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "description": "Every error answer of the API.",
    "properties": {
        "detail": {"type": "string", "description": "What went wrong, in a sentence."},
        "errors": {
            "type": "object",
            "additionalProperties": True,
            "description": "Invalid input only: the messages for each field.",
        },
        "reference": {
            "type": "string",
            "description": "Server errors only: quote it to an administrator.",
        },
    },
    "required": ["detail"],
}
DEFAULT_RESPONSE = {
    "description": "An error: 4xx for a request that cannot be served as sent, 5xx for a fault.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def add_error_answers(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Give every operation the ``Error`` body as its ``default`` answer.

    Operations that document a status of their own keep it; every other
    status (400, 401, 403, 404, 409, 413, 429, 500, 507…) answers ``Error``.
    """
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("default", DEFAULT_RESPONSE)
    return result
