"""Django admin for images, versions and setups.

Images are created, changed and deleted through the same services as the API,
so version 0, the audit log, the compression jobs and the setup checks all
apply. Checksums and sizes describe files on disk: they are read-only.

Administrators see everything. Moderators see only the system images assigned
to them, with their versions (``rules.can_admin_image``), and change what
``rules.can_write_image`` lets them; owners, types, maintainers and associated
images stay the administrators' business. Setups are for administrators only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet, Sum
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat

from accounts.models import Role, User
from accounts.services import audit_record
from baas_site.admin import AdministratorsOnly
from baas_site.errors import error_text
from baas_site.exceptions import DomainError
from catalogue import rules
from catalogue.models import Image, ImageFrozen, ImageSetup, ImageType, Mount, Version
from catalogue.services import images as image_services
from catalogue.services.pipeline import image_process, version_state
from catalogue.services.setups import effective_sync, frozen_image_check

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class _ImageUsage(TypedDict):
    n_versions: int
    bytes_used: int | None


class _SetupSize(TypedDict):
    n_images: int


VERSION_FIELDS = (
    "number",
    "size",
    "virtual_size",
    "sha256",
    "stored_size",
    "stored_compression",
    "uploaded_by",
    "created_at",
    "note",
)


class VersionInline(admin.TabularInline):
    """Versions are made by uploads, never by hand: shown, not edited."""

    model = Version
    fields = VERSION_FIELDS
    readonly_fields = VERSION_FIELDS
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ["number"]

    def has_add_permission(self, request: HttpRequest, obj: Image | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Image | None = None) -> bool:
        return rules.can_admin_image(request.user, obj)

    def has_change_permission(self, request: HttpRequest, obj: Image | None = None) -> bool:
        return False  # only the note changes, on the version's own page

    def has_delete_permission(self, request: HttpRequest, obj: Image | None = None) -> bool:
        return False


def maintained_system_images(user: User | AnonymousUser) -> QuerySet[Image]:
    """The images a moderator sees in the admin: the system images assigned to them."""
    if not isinstance(user, User):
        return Image.objects.none()
    return Image.objects.filter(type=ImageType.SYSTEM, maintainers=user)


class ImagePermissions:
    """``rules.can_admin_image`` for a ``ModelAdmin`` whose rows belong to an image."""

    def image_of(self, obj: Any) -> Image:
        """The image ``obj`` belongs to: ``obj`` itself here, a version's image below."""
        if not isinstance(obj, Image):
            raise TypeError(f"not an image: {obj!r}")
        return obj

    def has_module_permission(self, request: HttpRequest) -> bool:
        return rules.can_admin_image(request.user)

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return rules.can_admin_image(request.user, None if obj is None else self.image_of(obj))

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        if obj is None:
            return rules.can_admin_image(request.user)
        image = self.image_of(obj)
        return rules.can_admin_image(request.user, image) and rules.can_write_image(
            request.user, image
        )


# Moderators change an image's description, compression and flashing defaults only.
ADMINISTRATORS_FIELDS = ["owner", "type", "maintainers", "associated_images"]


@admin.register(Image)
class ImageAdmin(ImagePermissions, admin.ModelAdmin):
    list_display = [
        "name",
        "owner",
        "type",
        "file_standard",
        "compression",
        "version_count",
        "storage_used",
        "expires_at",
        "created_at",
    ]
    list_filter = ["type", "file_standard", "compression", "transfer_protocol"]
    search_fields = ["name", "uuid", "owner__username"]
    list_select_related = ["owner"]
    readonly_fields = ["uuid", "expires_at", "created_at", "updated_at"]
    filter_horizontal = ["maintainers", "associated_images"]
    raw_id_fields = ["owner"]
    inlines = [VersionInline]
    fieldsets = [
        (None, {"fields": ["uuid", "name", "owner", "description", "type"]}),
        ("Storage", {"fields": ["file_standard", "compression"]}),
        ("Flashing", {"fields": ["target_disk", "transfer_protocol", "associated_images"]}),
        ("Maintainers", {"fields": ["maintainers"]}),
        ("Lifecycle", {"fields": ["expires_at", "keep_versions"]}),
        ("Dates", {"fields": ["created_at", "updated_at"]}),
    ]
    actions = ["recompress", "delete_selected_images"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Image]:
        images: QuerySet[Image] = (
            super()
            .get_queryset(request)
            .annotate(n_versions=Count("versions"), bytes_used=Sum("versions__stored_size"))
        )
        if rules.is_administrator(request.user):
            return images
        return images.filter(pk__in=maintained_system_images(request.user).values("pk"))

    @admin.display(description="Versions", ordering="n_versions")
    def version_count(self, image: WithAnnotations[Image, _ImageUsage]) -> int:
        return image.n_versions

    @admin.display(description="Storage used", ordering="bytes_used")
    def storage_used(self, image: WithAnnotations[Image, _ImageUsage]) -> str:
        return filesizeformat(image.bytes_used or 0)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Moderators create system images in the dashboard or the API.
        return rules.is_administrator(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Image | None = None) -> bool:
        if obj is None:
            return rules.is_administrator(request.user)
        return rules.can_admin_image(request.user, obj) and rules.can_delete_image(
            request.user, obj
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Image | None = None) -> list[str]:
        fixed = ["file_standard"] if obj is not None else []
        if not rules.is_administrator(request.user):
            fixed += ADMINISTRATORS_FIELDS
        return [*self.readonly_fields, *fixed]

    @admin.action(
        description="Recompress every version to the image's compression", permissions=["change"]
    )
    def recompress(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        scheduled = 0
        for image in queryset:
            if rules.can_write_image(request.user, image):
                image_process(image)
                scheduled += 1
        self.message_user(
            request, f"Recompression scheduled for {scheduled} image(s).", messages.SUCCESS
        )

    def get_actions(self, request: HttpRequest):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk deletes bypass the setup check
        return actions

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "maintainers":
            kwargs["queryset"] = User.objects.filter(role__in=[Role.MODERATOR, Role.ADMINISTRATOR])
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Image, form, change: bool) -> None:
        if not change:
            image_services.image_create_from(actor=request.user, image=obj)
            return
        simple = {f: form.cleaned_data[f] for f in form.changed_data if f in EDITABLE}
        fresh = Image.objects.get(pk=obj.pk)
        image_services.image_update(actor=request.user, image=fresh, **simple)

    def get_deleted_objects(self, objs, request: HttpRequest):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Versions go with their image (the service decides), though not one by one.
        perms_needed.discard(str(Version._meta.verbose_name))
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: Image) -> None:
        image_services.image_delete(actor=request.user, image=obj)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except DomainError as exc:
            self.message_user(request, error_text(exc), messages.ERROR)
            return redirect("admin:catalogue_image_change", object_id)

    @admin.action(description="Delete the selected images and their files", permissions=["delete"])
    def delete_selected_images(self, request: HttpRequest, queryset: QuerySet[Image]) -> None:
        deleted = 0
        for image in queryset:
            try:
                image_services.image_delete(actor=request.user, image=image)
                deleted += 1
            except DomainError as exc:
                self.message_user(request, error_text(exc), messages.ERROR)
        if deleted:
            self.message_user(request, f"Deleted {deleted} image(s).", messages.SUCCESS)


EDITABLE = [
    "name",
    "description",
    "type",
    "compression",
    "target_disk",
    "transfer_protocol",
    "keep_versions",
]


@admin.register(Version)
class VersionAdmin(ImagePermissions, admin.ModelAdmin):
    """Versions, read-only but for the note."""

    list_display = [
        "image",
        "number",
        "size",
        "stored_size",
        "stored_compression",
        "uploaded_by",
        "created_at",
    ]
    list_filter = ["stored_compression", "image__type"]
    search_fields = ["image__name", "image__uuid", "sha256"]
    list_select_related = ["image", "uploaded_by"]
    readonly_fields = [f for f in VERSION_FIELDS if f != "note"] + ["image", "processing"]
    fields = ["image", "processing", *VERSION_FIELDS]

    @admin.display(description="Processing")
    def processing(self, obj: Version) -> str:
        """Where its processing stands (``catalogue.services.pipeline``: derived from its
        row and files, so shown on its page only, not in the list)."""
        state = version_state(obj)
        return f"{state}: {obj.damaged}" if obj.damaged else state

    def image_of(self, obj: Any) -> Image:
        if not isinstance(obj, Version):
            raise TypeError(f"not a version: {obj!r}")
        return obj.image

    def get_queryset(self, request: HttpRequest) -> QuerySet[Version]:
        versions: QuerySet[Version] = super().get_queryset(request)
        if rules.is_administrator(request.user):
            return versions
        return versions.filter(image__in=maintained_system_images(request.user).values("pk"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Version | None = None) -> bool:
        return False


# --- Image setups ---------------------------------------------------------------------
# Owned by the setups engineer. Every pinning rule is services.setups'
# ``frozen_image_check``, the same the API applies, judged against the setup
# being saved (its owner from the form, even before a new setup exists).


class FrozenImageFormSet(BaseInlineFormSet):
    """The setup's rows together: no image twice, no two images on one disk."""

    def get_form_kwargs(self, index: int | None) -> dict:
        return {**super().get_form_kwargs(index), "setup": self.instance}

    def clean(self) -> None:
        super().clean()
        disks: dict[str, str] = {}
        images: set = set()
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or data.get("DELETE") or not data.get("image"):
                continue
            image = data["image"]
            if image.pk in images:
                raise ValidationError(f'"{image.name}" is in this setup twice.')
            images.add(image.pk)
            disk = data.get("target_disk") or image.target_disk
            if data.get("partition"):
                disk = self.instance.partition_device(data["partition"]) or disk
            if disk in disks:
                raise ValidationError(f'"{disks[disk]}" and "{image.name}" both go to {disk}.')
            disks[disk] = image.name


class FrozenImageForm(forms.ModelForm):
    """One pinned image; ``setup`` is the formset's parent, saved or not."""

    class Meta:
        model = ImageFrozen
        fields = ["image", "version", "sync", "target_disk", "mount", "partition"]

    def __init__(self, *args, setup: ImageSetup | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setup = setup
        self.fields["mount"].required = False  # not given: the model's default, flashed

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        image = data.get("image")
        if image is None or self.setup is None or data.get("DELETE"):
            return data
        if getattr(self.setup, "owner_id", None) is None:
            return data  # the setup form reports the missing owner
        data["sync"] = effective_sync(image, data.get("sync", False))
        self.instance.sync = data["sync"]
        frozen_image_check(
            setup=self.setup,
            image=image,
            version=data.get("version"),
            sync=data["sync"],
            target_disk=data.get("target_disk", ""),
            mount=data.get("mount") or Mount.FLASH,
            exclude_pk=self.instance.pk,
            partition=data.get("partition", ""),
        )
        return data


class FrozenImageInline(AdministratorsOnly, admin.TabularInline):
    model = ImageFrozen
    form = FrozenImageForm
    formset = FrozenImageFormSet
    fields = ["image", "version", "sync", "target_disk", "mount", "partition"]
    raw_id_fields = ["image", "version"]
    extra = 0


@admin.register(ImageSetup)
class ImageSetupAdmin(AdministratorsOnly, admin.ModelAdmin):
    list_display = ["name", "owner", "image_count", "created_at", "updated_at"]
    list_filter = ["created_at"]
    search_fields = ["name", "uuid", "owner__username", "description"]
    list_select_related = ["owner"]
    raw_id_fields = ["owner"]
    # The partition table is changed through the API, which checks it against the images.
    readonly_fields = ["uuid", "layout", "created_at", "updated_at"]
    fields = ["uuid", "name", "owner", "description", "layout", "created_at", "updated_at"]
    inlines = [FrozenImageInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ImageSetup]:
        setups: QuerySet[ImageSetup] = super().get_queryset(request)
        return setups.annotate(n_images=Count("frozen_images"))

    @admin.display(description="Images", ordering="n_images")
    def image_count(self, setup: WithAnnotations[ImageSetup, _SetupSize]) -> int:
        return setup.n_images

    def save_model(self, request: HttpRequest, obj: ImageSetup, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        action = "setup.update" if change else "setup.create"
        audit_record(actor=request.user, action=action, target=obj, via="admin")
