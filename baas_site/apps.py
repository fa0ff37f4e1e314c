from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class BaasAdminConfig(AdminConfig):
    default_site = "baas_site.admin.BaasAdminSite"
