from __future__ import annotations

from django.urls import path, register_converter

from accounts import apis


class UsernameConverter:
    """Any path segment; the views answer 400 for a malformed name, 404 for an unknown one."""

    regex = r"[^/]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UsernameConverter, "username")

api_urlpatterns = [
    path("auth/token", apis.AuthTokenApi.as_view(), name="auth-token"),
    path("user", apis.UserCreateApi.as_view(), name="user-create"),
    path("users", apis.UserListApi.as_view(), name="user-list"),
    path("user/me", apis.UserMeApi.as_view(), name="user-me"),
    path("user/<username:username>", apis.UserDetailApi.as_view(), name="user-detail"),
    path(
        "user/<username:username>/tokens",
        apis.TokenListCreateApi.as_view(),
        name="user-tokens",
    ),
    path(
        "user/<username:username>/tokens/<int:token_id>",
        apis.TokenDetailApi.as_view(),
        name="user-token-detail",
    ),
]
