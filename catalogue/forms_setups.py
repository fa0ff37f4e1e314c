"""Dashboard forms for a setup's partition table: its disk and one row per partition.

The forms only turn what a person types into the layout the API takes
(``{"disk": ..., "partitions": [{"label", "size", "type"}]}``): a size such
as ``2G`` becomes bytes, "rest of the disk" becomes ``null``. Every rule
about the table (labels, whole MiB, only the last partition taking the rest,
types, the disk's name, the images already pinned) is ``catalogue.layouts``'
and ``diskimage.gpt``'s, applied by ``setup_update``; its refusal is shown on
the form by :meth:`LayoutForms.add_service_errors`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import QueryDict
from django.utils.datastructures import MultiValueDict

from baas_site.errors import error_messages
from baas_site.exceptions import DomainError
from diskimage import gpt

PREFIX = "partitions"
# Sizes as people write them: powers of 1024, the largest unit that divides first.
UNITS = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)]
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:iB)?|B)?\s*$", re.IGNORECASE)
# More rows than a table may have partitions, so that its rule (gpt.ENTRIES) is the one said.
MAX_ROWS = 4 * gpt.ENTRIES


def size_input(size: int) -> str:
    """``size`` bytes as typed back into the form: ``2G``, ``512M``, else the bytes."""
    for unit, factor in UNITS:
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def size_text(size: int) -> str:
    """``size`` bytes for people: ``2 GiB``, ``512 MiB``, else ``1048577 bytes``."""
    for unit, factor in UNITS:
        if size and size % factor == 0:
            return f"{size // factor} {unit}iB"
    return f"{size} bytes"


def parse_size(text: str) -> int:
    """The bytes of ``2G``, ``1.5G``, ``512MiB`` or ``1048576``; ValueError with a reason."""
    match = SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"'{text}' is not a size: write 512M, 2G or a number of bytes.")
    number, unit = match.groups()
    factor = dict(UNITS)[unit.upper()] if unit else 1
    size = Decimal(number) * factor  # the pattern admits only plain decimals
    if size != size.to_integral_value():
        raise ValueError(f"'{text}' is not a whole number of bytes.")
    return int(size)


class SizeField(forms.CharField):
    """A size in bytes, typed as ``2G`` or a number; empty is None."""

    def to_python(self, value: Any) -> int | None:  # type: ignore[override]
        text = super().to_python(value)
        if not text:
            return None
        try:
            return parse_size(text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc), code="invalid") from exc


class LayoutForm(forms.Form):
    disk = forms.CharField(
        max_length=255,
        initial="/dev/sda",
        label="Disk",
        help_text="The whole disk the table is written to, by its kernel name: /dev/sda, "
        "/dev/nvme0n1. Its partitions are then /dev/sda1, /dev/sda2…",
    )


class PartitionForm(forms.Form):
    """One row of the table; a row with no label, size or "rest" is left out."""

    label = forms.CharField(required=False, strip=True)
    size = SizeField(required=False)
    rest = forms.BooleanField(required=False, label="Rest of the disk")
    type = forms.CharField(
        required=False,
        initial="linux",
        widget=forms.TextInput(attrs={"list": "partition-types"}),
    )

    def is_blank(self) -> bool:
        data = self.cleaned_data
        return not data.get("label") and data.get("size") is None and not data.get("rest")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.is_blank() or self.has_error("size"):
            return data
        if data.get("size") is not None and data.get("rest"):
            self.add_error("rest", "Give a size or the rest of the disk, not both.")
        elif data.get("size") is None and not data.get("rest"):
            self.add_error("size", "Give a size, such as 2G, or choose the rest of the disk.")
        return data

    def spec(self) -> dict[str, Any]:
        data = self.cleaned_data
        size = None if data["rest"] else data["size"]
        return {"label": data["label"], "size": size, "type": data["type"] or "linux"}


class PartitionFormSet(forms.BaseFormSet):
    def kept(self) -> list[PartitionForm]:
        """The rows that make the table: neither blank nor marked for removal."""
        return [
            form
            for form in self.forms
            if not self._should_delete_form(form) and not form.is_blank()  # type: ignore[attr-defined]
        ]


def _initial_rows(layout: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [
        {
            "label": item["label"],
            "size": "" if item["size"] is None else size_input(item["size"]),
            "rest": item["size"] is None,
            "type": item["type"],
        }
        for item in (layout or {}).get("partitions") or []
    ]


def _sent_rows(data: QueryDict) -> list[dict[str, Any]] | None:
    """The rows as sent, unchecked, to show again with one more; None if the count is broken."""
    try:
        total = int(data.get(f"{PREFIX}-TOTAL_FORMS", ""))
    except ValueError:
        return None
    checkbox = forms.CheckboxInput()
    rows = []
    for index in range(max(0, min(total, MAX_ROWS))):
        name = f"{PREFIX}-{index}-"
        row: dict[str, Any] = {key: data.get(name + key, "") for key in ("label", "size", "type")}
        for key in ("rest", "DELETE"):
            row[key] = bool(checkbox.value_from_datadict(data, MultiValueDict(), name + key))
        rows.append(row)
    return rows


class LayoutForms:
    """The table editor of a setup page: the disk, then one form per partition row.

    Unbound, it shows the setup's ``layout`` and blank rows to fill. With
    ``more`` (the "Add a partition" button of a page without scripts), it shows
    what was sent, unchecked, and one blank row more.
    """

    def __init__(
        self, data: QueryDict | None = None, *, layout: dict[str, Any] | None, more: bool = False
    ) -> None:
        rows = _initial_rows(layout)
        initial = {"disk": layout["disk"]} if layout else None
        extra = 1 if rows else 2
        if data is not None and more:
            sent = _sent_rows(data)
            rows = rows if sent is None else sent
            extra, initial, data = 1, {"disk": data.get("disk", "")}, None
        self.table = LayoutForm(data, initial=initial)
        formset = forms.formset_factory(
            PartitionForm,
            formset=PartitionFormSet,
            extra=extra,
            can_delete=True,
            max_num=MAX_ROWS,
            absolute_max=MAX_ROWS,
        )
        self.rows = cast(PartitionFormSet, formset(data, initial=rows, prefix=PREFIX))
        self.refusals: list[str] = []

    def is_valid(self) -> bool:
        table_ok = self.table.is_valid()
        return self.rows.is_valid() and table_ok

    def layout(self) -> dict[str, Any]:
        """The table as the API takes it; call after :meth:`is_valid`."""
        return {
            "disk": self.table.cleaned_data["disk"],
            "partitions": [form.spec() for form in self.rows.kept()],
        }

    def add_service_errors(self, exc: DomainError | DjangoValidationError) -> None:
        """A refusal of ``setup_update``, above the form: all it says is about the table."""
        found = exc.messages if isinstance(exc, DjangoValidationError) else exc.detail
        self.refusals += error_messages(found)

    @property
    def errors(self) -> list[str]:
        """The messages shown above the form: the service's, the table's as a whole."""
        return [*self.refusals, *self.table.non_field_errors(), *self.rows.non_form_errors()]

    @property
    def invalid(self) -> bool:
        """Whether the form is shown with errors."""
        return bool(self.errors or self.table.errors or self.rows.total_error_count())


PARTITION_TYPES = list(gpt.TYPES)
