"""The API schema, as served, is a valid OpenAPI document (clients generate code from it)."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

pytestmark = pytest.mark.django_db


def test_the_served_schema_passes_the_openapi_validator(user_client):
    schema = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    validate(schema)  # raises, naming the place, on the first error


def test_optional_text_fields_may_be_left_empty_as_their_defaults_are(user_client):
    # A default of "" beside minLength 1 made the schema invalid (check-in, user creation).
    schema = user_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for name, component in schema["components"]["schemas"].items():
        for field, spec in component.get("properties", {}).items():
            if spec.get("default") == "":
                assert spec.get("minLength", 0) == 0, f"{name}.{field}"
