"""Imports in the admin: follow every job, and start one (the same form and service as the
image page; the service checks the right)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from baas_site.exceptions import DomainError
from catalogue.models import Image
from imports.forms import ImportForm
from imports.models import ImportJob
from imports.rules import can_import_image
from imports.services import jobs


class ImportAdminForm(forms.ModelForm, ImportForm):
    image = forms.ModelChoiceField(queryset=Image.objects.all())
    request_user: Any = None

    class Meta:
        model = ImportJob
        fields = ["image"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        image = cleaned.get("image")
        if image is not None and not can_import_image(self.request_user, image):
            raise ValidationError("You may not import into this image.")
        return cleaned


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "source", "state", "version", "created_by", "created_at"]
    list_filter = ["state", "kind"]
    search_fields = ["source", "manifest_digest"]
    readonly_fields = [f.name for f in ImportJob._meta.fields]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        if obj is not None:
            return super().get_form(request, obj, change=change, **kwargs)
        # A class per request: the user it checks is never shared between requests.
        return type("ImportAdminForm", (ImportAdminForm,), {"request_user": request.user})

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.readonly_fields if obj is not None else []

    def get_fieldsets(self, request: HttpRequest, obj: Any = None):
        if obj is not None:
            return super().get_fieldsets(request, obj)
        return [(None, {"fields": ["image", *ImportForm.base_fields]})]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            return
        values = {k: form.cleaned_data[k] for k in ImportForm.base_fields}
        values["platform"] = values["platform"] or "linux/amd64"
        values["label"] = values["label"] or "root"
        try:
            job = jobs.import_create(
                actor=request.user,
                image=form.cleaned_data["image"],
                request=jobs.ImportRequest(**values),
            )
        except DomainError as exc:
            raise ValidationError(str(exc)) from exc
        obj.pk = job.pk
        obj.__dict__.update(ImportJob.objects.get(pk=job.pk).__dict__)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None or super().has_view_permission(request, obj)
