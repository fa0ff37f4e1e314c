"""Serializer fields shared by the catalogue's APIs."""

from __future__ import annotations

from rest_framework import serializers


class DigestField(serializers.CharField):
    """A SHA-256 in hex; null while a background job computes it (a large upload's)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("read_only", True)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value: str) -> str | None:
        return value or None
