"""REST API for users and personal access tokens (paths from the original BAAS)."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts import rules, selectors, services
from accounts.models import AccessToken, Role, User, username_validator


class UserOutputSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="display_name")
    is_administrator = serializers.BooleanField(read_only=True)

    class Meta:
        model = User
        fields = [
            "username",
            "name",
            "email",
            "role",
            "is_administrator",
            "storage_quota",
            "date_joined",
        ]
        extra_kwargs = {
            "storage_quota": {
                "help_text": "Bytes on disk the user's images may take (null: no limit); "
                "GET /api/user/<name>/usage shows what they use"
            }
        }


class UserPublicSerializer(serializers.ModelSerializer):
    name = serializers.CharField(source="display_name")

    class Meta:
        model = User
        fields = ["username", "name", "role"]


class UserCreateInputSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, validators=[username_validator])
    email = serializers.EmailField()
    name = serializers.CharField(max_length=150, required=False, default="")
    role = serializers.ChoiceField(choices=Role.choices, default=Role.USER)
    password = serializers.CharField(required=False, write_only=True, min_length=8)

    def validate_username(self, value: str) -> str:
        if User.objects.filter(username=value).exists():
            raise serializers.ValidationError("This username is taken.")
        return value

    def validate_email(self, value: str) -> str:
        if User.objects.filter(email__iexact=value).exists():
            raise serializers.ValidationError("A user with this email exists.")
        return value


class UserUpdateInputSerializer(serializers.Serializer):
    email = serializers.EmailField(required=False)
    name = serializers.CharField(max_length=150, required=False, source="display_name")
    role = serializers.ChoiceField(choices=Role.choices, required=False)
    password = serializers.CharField(required=False, write_only=True, min_length=8)
    storage_quota = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=0,
        help_text="Bytes on disk the user's images may take; null: no limit (administrators only)",
    )

    def validate_email(self, value: str) -> str:
        others = User.objects.filter(email__iexact=value).exclude(pk=self.context["user"].pk)
        if others.exists():
            raise serializers.ValidationError("A user with this email exists.")
        return value


class UserCreateApi(APIView):
    permission_classes = [rules.IsAdministrator]

    @extend_schema(request=UserCreateInputSerializer, responses={201: UserOutputSerializer})
    def post(self, request: Request) -> Response:
        data = UserCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        user = services.user_create(
            actor=request.user,
            username=values["username"],
            email=values["email"],
            display_name=values["name"],
            role=values["role"],
            password=values.get("password"),
        )
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


class UserListApi(APIView):
    @extend_schema(responses=UserPublicSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(UserPublicSerializer(selectors.user_list(), many=True).data)


class UserMeApi(APIView):
    @extend_schema(responses=UserOutputSerializer)
    def get(self, request: Request) -> Response:
        return Response(UserOutputSerializer(request.user).data)


class UserDetailApi(APIView):
    """One user: themselves or an administrator; anyone else gets 404."""

    @extend_schema(responses=UserOutputSerializer)
    def get(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        return Response(UserOutputSerializer(user).data)

    @extend_schema(request=UserUpdateInputSerializer, responses=UserOutputSerializer)
    def patch(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        data = UserUpdateInputSerializer(data=request.data, context={"user": user})
        data.is_valid(raise_exception=True)
        user = services.user_update(actor=request.user, user=user, **data.validated_data)
        return Response(UserOutputSerializer(user).data)

    @extend_schema(request=UserUpdateInputSerializer, responses=UserOutputSerializer)
    def put(self, request: Request, username: str) -> Response:
        return self.patch(request, username)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        services.user_delete(actor=request.user, user=user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenOutputSerializer(serializers.ModelSerializer):
    expires = serializers.DateTimeField(source="expires_at", allow_null=True)
    last_used = serializers.DateTimeField(source="last_used_at", allow_null=True)
    created = serializers.DateTimeField(source="created_at")

    class Meta:
        model = AccessToken
        fields = ["id", "name", "hint", "created", "expires", "last_used"]


class TokenCreatedSerializer(TokenOutputSerializer):
    token = serializers.CharField(help_text="The secret: shown only this once.")

    class Meta(TokenOutputSerializer.Meta):
        fields = [*TokenOutputSerializer.Meta.fields, "token"]


class TokenCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, default="api")
    expires = serializers.DateTimeField(required=False, allow_null=True, default=None)

    def validate_expires(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value


def _token_created_response(token: AccessToken, secret: str) -> Response:
    token.token = secret  # only on this response object, never stored
    return Response(TokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)


class LoginTokenInputSerializer(TokenCreateInputSerializer):
    username = serializers.CharField()
    password = serializers.CharField(write_only=True)


class AuthTokenApi(APIView):
    """Exchange a username and password for a new personal access token."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"

    @extend_schema(
        request=LoginTokenInputSerializer, responses={201: TokenCreatedSerializer}, auth=[]
    )
    def post(self, request: Request) -> Response:
        data = LoginTokenInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user = authenticate(request, username=values["username"], password=values["password"])
        if user is None:
            raise AuthenticationFailed("Wrong username or password.")
        token, secret = services.token_create(
            actor=user, user=user, name=values["name"], expires_at=values["expires"]
        )
        return _token_created_response(token, secret)

    def get_authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class TokenListCreateApi(APIView):
    @extend_schema(responses=TokenOutputSerializer(many=True))
    def get(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        return Response(TokenOutputSerializer(selectors.token_list(user=user), many=True).data)

    @extend_schema(request=TokenCreateInputSerializer, responses={201: TokenCreatedSerializer})
    def post(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        data = TokenCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, secret = services.token_create(
            actor=request.user,
            user=user,
            name=data.validated_data["name"],
            expires_at=data.validated_data["expires"],
        )
        return _token_created_response(token, secret)


class TokenDetailApi(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, username: str, token_id: int) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        token = selectors.token_get(user=user, token_id=token_id)
        services.token_revoke(actor=request.user, token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)
