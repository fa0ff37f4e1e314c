"""Dashboard forms for images and setups.

Forms only parse input: each field calls the model's own validators
(``validate_image_name``, ``validate_target_disk``), and every rule about who
may do what stays in ``catalogue.rules`` and the services, whose errors
``add_service_errors`` puts back on the form.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from django import forms
from django.template.defaultfilters import filesizeformat

from accounts.rules import Actor
from baas_site.errors import error_messages
from baas_site.exceptions import DomainError
from catalogue import rules
from catalogue.models import (
    MOUNT_HELP,
    Compression,
    FileStandard,
    Image,
    ImageType,
    Mount,
    TransferProtocol,
    validate_image_name,
    validate_target_disk,
)

ANY = [("", "Any type")]


def add_service_errors(form: forms.Form, exc: DomainError) -> None:
    """Show a service's refusal (invalid input, not allowed, a conflict) on ``form``."""
    detail = exc.detail
    if not isinstance(detail, dict):
        form.add_error(None, error_messages(detail))
        return
    for field, messages in detail.items():
        target = field if field in form.fields else None
        prefix = "" if target or field in ("non_field_errors", "detail") else f"{field}: "
        form.add_error(target, [prefix + m for m in error_messages(messages)])


class ImageFilterForm(forms.Form):
    """The image list's filters; all optional, applied by ``catalogue.filters.ImageFilter``."""

    search = forms.CharField(required=False, max_length=200, label="Name contains")
    type = forms.ChoiceField(required=False, choices=ANY + ImageType.choices)
    owner = forms.CharField(required=False, max_length=150, label="Owner (username)")


class ImageMetadataForm(forms.Form):
    name = forms.CharField(max_length=200, validators=[validate_image_name])
    type = forms.ChoiceField(choices=ImageType.choices, initial=ImageType.SINGLE)
    compression = forms.ChoiceField(
        choices=Compression.choices,
        initial=Compression.NONE,
        label="Stored compression",
        help_text="How the server keeps the versions on disk; downloads can be decompressed.",
    )
    target_disk = forms.CharField(
        max_length=255,
        initial="/dev/sda",
        validators=[validate_target_disk],
        help_text="The disk it is written to, such as /dev/sda or /dev/nvme0n1p2.",
    )
    transfer_protocol = forms.ChoiceField(
        choices=TransferProtocol.choices, initial=TransferProtocol.HTTP
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args: Any, user: Actor, current_type: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        type_field = self.fields["type"]
        assert isinstance(type_field, forms.ChoiceField)
        type_field.choices = [
            (value, label)
            for value, label in ImageType.choices
            if value == current_type or self._may_choose(user, current_type, value)
        ]

    @staticmethod
    def _may_choose(user: Actor, current_type: str | None, value: str) -> bool:
        if current_type is None:
            return rules.can_create_image(user, value)
        return rules.can_change_image_type(user, current_type, value)


class ImageCreateForm(ImageMetadataForm):
    file_standard = forms.ChoiceField(
        choices=FileStandard.choices,
        initial=FileStandard.RAW,
        label="File format",
        help_text="Fixed once the image is created.",
    )
    field_order = ["name", "type", "file_standard", "compression", "target_disk"]


class ImageEditForm(ImageMetadataForm):
    @classmethod
    def initial_for(cls, image: Image) -> dict[str, Any]:
        return {name: getattr(image, name) for name in cls.base_fields}


class SetupForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))


class FrozenImageForm(forms.Form):
    """Pick one version of one image (``<image uuid>:<number>``), its sync flag, disk and mount,
    and, when the setup has a partition table, the partition it goes into."""

    version = forms.ChoiceField(label="Image and version")
    sync = forms.BooleanField(
        required=False,
        label="Sync back after use",
        help_text="Upload the disk as the image's next version when the machine is done. "
        "Always on for user data images.",
    )
    target_disk = forms.CharField(
        required=False,
        max_length=255,
        validators=[validate_target_disk],
        help_text="Leave empty to use the image's own target disk.",
    )
    mount = forms.ChoiceField(
        choices=Mount.choices,
        initial=Mount.FLASH,
        required=False,  # as in the API: not given means flashed
        label="How the machine gets it",
        help_text=MOUNT_HELP,
    )
    partition = forms.ChoiceField(
        required=False,
        label="Partition",
        help_text="An image whose target disk is the partition table's goes into one of its "
        "partitions.",
    )

    def __init__(
        self,
        *args: Any,
        images: Iterable[Image],
        partitions: Iterable[tuple[str, str]] = (),
        table_disk: str = "",
        **kwargs: Any,
    ):
        """``partitions``: (label, description) of the setup's table on ``table_disk``, if any."""
        super().__init__(*args, **kwargs)
        partition_field = self.fields["partition"]
        assert isinstance(partition_field, forms.ChoiceField)
        partition_field.choices = [("", "None: a whole disk"), *partitions]
        if table_disk:
            partition_field.help_text = (
                f"An image written to {table_disk}, the partition table's disk, goes into one "
                "of its partitions."
            )
        else:
            del self.fields["partition"]
        version_field = self.fields["version"]
        assert isinstance(version_field, forms.ChoiceField)
        version_field.choices = [("", "Choose an image version…")] + [
            (f"{image.name} ({image.owner.username}, {image.get_type_display()})", _options(image))
            for image in images
        ]

    def clean_mount(self) -> str:
        return self.cleaned_data["mount"] or Mount.FLASH

    def clean_version(self) -> tuple[uuid.UUID, int]:
        image_id, _, number = self.cleaned_data["version"].partition(":")
        return uuid.UUID(image_id), int(number)


def _options(image: Image) -> list[tuple[str, str]]:
    versions = sorted(image.versions.all(), key=lambda v: -v.number)
    return [
        (
            f"{image.pk}:{v.number}",
            f"{image.name} v{v.number}{' (latest)' if i == 0 else ''} · {filesizeformat(v.size)}"
            f" → {image.target_disk}",
        )
        for i, v in enumerate(versions)
    ]
