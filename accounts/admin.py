"""Django admin for users, tokens and the audit log: administrators only."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserCreationForm, UsernameField
from django.db.models import QuerySet, Sum
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat

from accounts import ownership
from accounts.models import AccessToken, AuditEvent, User
from accounts.services import audit_record, tokens_revoke_all, user_delete
from baas_site.admin import AdministratorsOnly

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class _StorageUsed(TypedDict):
    bytes_used: int | None


class BaasUserCreationForm(UserCreationForm):
    class Meta:  # Django's UserCreationForm.Meta, with our fields
        model = User
        fields = ("username", "email", "display_name", "role")
        field_classes = {"username": UsernameField}


@admin.register(User)
class UserAdmin(AdministratorsOnly, DjangoUserAdmin):
    add_form = BaasUserCreationForm
    list_display = [
        "username",
        "email",
        "display_name",
        "role",
        "is_active",
        "storage_used",
        "storage_quota_display",
        "date_joined",
    ]
    list_filter = ["role", "is_active", "is_superuser"]
    search_fields = ["username", "email", "display_name"]
    ordering = ["username"]
    readonly_fields = ["last_login", "date_joined"]
    fieldsets = [
        (None, {"fields": ["username", "password"]}),
        ("Profile", {"fields": ["display_name", "email"]}),
        ("Access", {"fields": ["role", "is_active", "is_superuser"]}),
        ("Storage", {"fields": ["storage_quota"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [
        (
            None,
            {
                "classes": ["wide"],
                "fields": ["username", "email", "display_name", "role", "password1", "password2"],
            },
        )
    ]
    filter_horizontal = []

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        # The bytes on disk of every version of the user's images (catalogue.Version.stored_size).
        users: QuerySet[User] = super().get_queryset(request)
        return users.annotate(bytes_used=Sum("images__versions__stored_size"))

    @admin.display(description="Storage used", ordering="bytes_used")
    def storage_used(self, user: WithAnnotations[User, _StorageUsed]) -> str:
        return filesizeformat(user.bytes_used or 0)

    @admin.display(description="Quota", ordering="storage_quota")
    def storage_quota_display(self, user: User) -> str:
        return "—" if user.storage_quota is None else filesizeformat(user.storage_quota)

    def save_model(self, request, obj, form, change) -> None:
        if change and "storage_quota" in form.changed_data:
            audit_record(
                actor=request.user,
                action="user.quota",
                target=obj,
                old=form.initial.get("storage_quota"),
                new=obj.storage_quota,
            )
        if change and "role" in form.changed_data:
            audit_record(
                actor=request.user,
                action="user.role",
                target=obj,
                old=form.initial.get("role"),
                new=obj.role,
            )
        super().save_model(request, obj, form, change)

    def get_deleted_objects(self, objs, request):
        """Users who own or hold anything are refused, with what they own in plain words.

        Django's delete page lists these "protected" lines and deletes nothing; the
        API's ``DELETE /api/user/<name>?transfer_to=…`` hands them over instead.
        """
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        refused = [
            f"{user.username} owns or holds {line}"
            for user in objs
            for line in ownership.owned(user)
        ]
        return deleted, counts, perms_needed, [*refused, *protected]

    def delete_model(self, request, obj) -> None:
        user_delete(actor=request.user, user=obj)

    def delete_queryset(self, request, queryset) -> None:
        for user in queryset:
            user_delete(actor=request.user, user=user)

    def user_change_password(self, request, id, form_url=""):
        """Django's page; a new password also revokes all the user's tokens."""
        user = self.get_object(request, unquote(id))
        before = user.password if user is not None else None
        response = super().user_change_password(request, id, form_url)
        if user is not None and request.method == "POST":
            user.refresh_from_db(fields=["password"])
            if user.password != before:
                tokens_revoke_all(actor=request.user, user=user, why="password changed")
        return response


@admin.register(AccessToken)
class AccessTokenAdmin(AdministratorsOnly, admin.ModelAdmin):
    list_display = ["name", "user", "hint", "scopes", "created_at", "expires_at", "last_used_at"]
    list_filter = ["expires_at"]
    search_fields = ["name", "user__username"]
    readonly_fields = (
        "user",
        "name",
        "hint",
        "scopes",
        "created_at",
        "expires_at",
        "last_used_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # a token's secret is shown once, through the API or dashboard


@admin.register(AuditEvent)
class AuditEventAdmin(AdministratorsOnly, admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "target_type", "target_id"]
    list_filter = ["action", "target_type"]
    search_fields = ["actor__username", "target_id", "action"]
    readonly_fields = ["created_at", "actor", "action", "target_type", "target_id", "data"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
