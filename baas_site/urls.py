from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts.urls import api_urlpatterns as accounts_api
from baas_site import views
from baas_site.docs import DocsView, SchemaView
from baas_site.health import healthz
from baas_site.metrics import metrics

handler404 = "baas_site.errors.not_found"
handler500 = "baas_site.errors.server_error"

api_urlpatterns = [
    *accounts_api,
    path("schema/", SchemaView.as_view(), name="schema"),
    path("docs/", DocsView.as_view(url_name="schema"), name="api-docs"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/", include(api_urlpatterns)),
    path("api/", include("catalogue.urls")),
    path("api/", include("flashing.urls")),
    path("api/", include("imports.urls")),
    path("", include("catalogue.urls_pages")),
    path("", include("accounts.urls_pages")),
    path("", include("flashing.urls_pages")),
    path("", include("imports.urls_pages")),
]
