"""Filtering and ordering for the API's lists, the same on every list.

Each list view names a django-filter ``FilterSet`` (``filterset_class``) and the
fields it may be ordered by (``ordering_fields``); ``FILTER_BACKENDS`` applies
both. A value outside a filter's choices, or an ordering field the list does
not offer, answers 400 with the usual error body (``baas_site.errors``) naming
the parameter, never an empty or silently unordered list. The filters only
narrow a queryset the view's selector has already limited to what the caller
may see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.exceptions import ValidationError
from rest_framework.filters import BaseFilterBackend, OrderingFilter
from rest_framework.request import Request
from rest_framework.views import APIView

if TYPE_CHECKING:  # a protocol of the type stubs only
    from rest_framework.generics import BaseFilterProtocol


class StrictOrderingFilter(OrderingFilter):
    """DRF's ``?ordering=``, but an unknown field is a 400 rather than silently ignored.

    Views list the fields explicitly in ``ordering_fields`` (DRF would otherwise
    offer every serializer field); a ``-`` before a field orders it descending.
    """

    def get_ordering(self, request: Request, queryset: QuerySet, view: APIView) -> Any:
        params = request.query_params.get(self.ordering_param)
        if params:
            fields = [param.strip() for param in params.split(",") if param.strip()]
            valid = {name for name, _label in self.get_valid_fields(queryset, view)}
            unknown = [field for field in fields if field.lstrip("-") not in valid]
            if unknown:
                raise ValidationError(
                    {
                        self.ordering_param: [
                            f"'{unknown[0]}' is not a field this list can be ordered by; "
                            f"use one of {', '.join(sorted(valid))}."
                        ]
                    }
                )
        return super().get_ordering(request, queryset, view)

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        """``ordering`` as a comma-separated list of the fields offered, each maybe with '-'."""
        fields = list(getattr(view, "ordering_fields", None) or [])
        choices = [order for field in fields for order in (field, f"-{field}")]
        return [
            {
                "name": self.ordering_param,
                "required": False,
                "in": "query",
                "description": f"Order by {', '.join(fields)} (comma-separated; "
                "'-' before a field: descending)",
                "style": "form",
                "explode": False,
                "schema": {"type": "array", "items": {"type": "string", "enum": choices}},
            }
        ]


# django-filter's backend is not a BaseFilterBackend: it is typed by DRF's protocol.
FILTER_BACKENDS: Sequence[type[BaseFilterBackend | BaseFilterProtocol[Any]]] = [
    DjangoFilterBackend,
    StrictOrderingFilter,
]
