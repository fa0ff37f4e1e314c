"""The OpenAPI schema's error answers (a drf-spectacular post-processing hook).

Every operation answers the shared ``Error`` body for any failure (``default``),
and names the client errors that follow from its own shape, so that a client
generated from the schema knows them: 401 and 403 where credentials are needed
(no valid credentials; a token's scopes or the caller's role refuse it), 404
where the path names something (it does not exist, or is someone else's and
private), 400 where the request carries input (a body, query or header
parameters). Statuses an operation documents itself (409, 413, 416, 429…) keep
their own description.
"""

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


CLIENT_ERRORS = {
    "400": "Invalid input: `detail` says what, `errors` lists the fields.",
    "401": "No valid credentials: sign in, or send a valid token.",
    "403": "Not allowed: the token's scopes or your role do not permit this.",
    "404": "Nothing of that name, or it is someone else's and not shared.",
}


OTHER_CLIENT_ERROR = "Refused as asked: `detail` says why and what to do."


def _error(description: str) -> dict[str, Any]:
    return {**DEFAULT_RESPONSE, "description": description}


def client_errors(operation: dict[str, Any]) -> list[str]:
    """The 4xx statuses that follow from the operation's shape."""
    codes = []
    places = {parameter.get("in") for parameter in operation.get("parameters", [])}
    if "requestBody" in operation or places & {"query", "header"}:
        codes.append("400")
    if any(requirement for requirement in operation.get("security", [])):
        codes += ["401", "403"]
    if "path" in places:
        codes.append("404")
    return codes


def add_error_answers(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Give every operation its client errors and the ``Error`` body as ``default``."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                responses = operation["responses"]
                for code in client_errors(operation):
                    responses.setdefault(code, _error(CLIENT_ERRORS[code]))
                for code, response in responses.items():
                    if code.startswith("4") and not response.get("description"):
                        response["description"] = CLIENT_ERRORS.get(code, OTHER_CLIENT_ERROR)
                responses.setdefault("default", DEFAULT_RESPONSE)
                operation["responses"] = dict(sorted(responses.items()))
    return result
