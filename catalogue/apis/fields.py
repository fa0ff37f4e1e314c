"""Serializer fields shared by the catalogue's APIs."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class DigestField(serializers.CharField):
    """A SHA-256 in hex; null while a background job computes it (a large upload's)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    # The stubs' CharField always represents a str; this one is null ("") until computed,
    # which the schema says (allow_null).
    def to_representation(self, value: str) -> str | None:  # type: ignore[override]
        return value or None
