"""Django admin, open to administrators only (see ``accounts.rules``)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest


class BaasAdminSite(admin.AdminSite):
    site_header = "BAAS administration"
    site_title = "BAAS admin"
    index_title = "Users, images and machines"

    def has_permission(self, request: HttpRequest) -> bool:
        from accounts.rules import can_use_admin

        return can_use_admin(request.user)
