"""Dashboard pages for the signed-in user's access tokens."""

from __future__ import annotations

from django.urls import path

from accounts import views

urlpatterns = [
    path("tokens/", views.token_list, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
]
