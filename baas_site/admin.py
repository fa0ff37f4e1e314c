"""Django admin, for administrators and moderators (see ``accounts.rules``).

Administrators see everything. Moderators see only the system images assigned
to them (``catalogue.admin``); every other admin page is for administrators,
by ``AdministratorsOnly``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.http import HttpRequest


class BaasAdminAuthenticationForm(AdminAuthenticationForm):
    """Admin's own sign-in form: ``rules.can_use_admin`` instead of Django's ``is_staff``."""

    def confirm_login_allowed(self, user: Any) -> None:
        from accounts.rules import can_use_admin

        if not can_use_admin(user):
            raise forms.ValidationError(
                self.error_messages["invalid_login"],
                code="invalid_login",
                params={"username": self.username_field.verbose_name},
            )


class BaasAdminSite(admin.AdminSite):
    site_header = "BAAS administration"
    site_title = "BAAS admin"
    index_title = "Users, images and machines"
    login_form = BaasAdminAuthenticationForm

    def has_permission(self, request: HttpRequest) -> bool:
        from accounts.rules import can_use_admin

        return can_use_admin(request.user)

    def password_change(self, request: HttpRequest, extra_context: Any = None) -> Any:
        """Django's page for one's own password; a new password also revokes one's tokens,
        as every other way of changing a password does (``accounts.services``)."""
        from accounts.services import tokens_revoke_all

        user = request.user
        before = getattr(user, "password", None)
        response = super().password_change(request, extra_context)
        if request.method == "POST" and user.is_authenticated:
            user.refresh_from_db(fields=["password"])
            if user.password != before:
                tokens_revoke_all(actor=user, user=user, why="password changed")
        return response


if TYPE_CHECKING:
    # What the mixin's ``super()`` calls reach: the admin class it is mixed into.
    _AdminBase = admin.ModelAdmin[Any]
else:
    _AdminBase = object


class AdministratorsOnly(_AdminBase):
    """A ``ModelAdmin`` (or inline) mixin: the page exists for administrators only.

    Django's permissions still apply on top, and a subclass may narrow them
    further (no add, read-only…).
    """

    def _administrator(self, request: HttpRequest) -> bool:
        from accounts.rules import can_admin_everything

        return can_admin_everything(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._administrator(request) and super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._administrator(request) and super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return self._administrator(request) and super().has_add_permission(request, *args)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._administrator(request) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._administrator(request) and super().has_delete_permission(request, obj)
