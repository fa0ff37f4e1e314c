"""REST API for users and personal access tokens (paths from the original BAAS)."""

from __future__ import annotations

from django.contrib.auth import update_session_auth_hash
from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import logins, scopes, selectors, services
from accounts.models import AccessToken, Role, User, username_validator
from accounts.permissions import IsAdministrator
from baas_site.created import LOCATION, created
from baas_site.filters import FILTER_BACKENDS


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
    name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
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
    current_password = serializers.CharField(
        required=False,
        write_only=True,
        help_text="Needed to change the password or email, unless an administrator "
        "changes another user.",
    )
    revoke_tokens = serializers.BooleanField(
        required=False,
        default=True,
        help_text="With a new password: delete all the user's tokens, the one making this "
        "request too (default). Web sessions end with any password change.",
    )
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
    permission_classes = [IsAdministrator]
    account_administration = True  # a token needs the admin scope (accounts.scopes)

    @extend_schema(
        request=UserCreateInputSerializer,
        responses={201: UserOutputSerializer},
        parameters=[LOCATION],
    )
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
        return created(UserOutputSerializer(user).data, "user-detail", username=user.username)


class UserListApi(generics.ListAPIView):
    serializer_class = UserPublicSerializer
    queryset = User.objects.none()  # the model, for the schema; ``get_queryset`` reads
    filter_backends = FILTER_BACKENDS
    ordering_fields = ["username", "date_joined"]

    def get_queryset(self) -> QuerySet[User]:
        return selectors.user_list()


class UserMeApi(APIView):
    @extend_schema(responses=UserOutputSerializer)
    def get(self, request: Request) -> Response:
        return Response(UserOutputSerializer(request.user).data)


class UserDeleteQuerySerializer(serializers.Serializer):
    transfer_to = serializers.CharField(
        required=False,
        help_text="An administrator's username: hand the user's images, setups and "
        "deployments to them, ending the user's leases first (administrators only).",
    )


class UserOwnsSerializer(serializers.Serializer):
    detail = serializers.CharField()
    owns = serializers.ListField(child=serializers.CharField())


class UserDetailApi(APIView):
    """One user: themselves or an administrator; anyone else gets 404."""

    account_administration = True  # changes need a token's admin scope

    @extend_schema(responses=UserOutputSerializer)
    def get(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        return Response(UserOutputSerializer(user).data)

    @extend_schema(request=UserUpdateInputSerializer, responses=UserOutputSerializer)
    def patch(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        data = UserUpdateInputSerializer(data=request.data, context={"user": user})
        data.is_valid(raise_exception=True)
        user = services.user_update(
            actor=request.user, user=user, request=request, **data.validated_data
        )
        if request.auth is None and request.user.pk == user.pk:
            # The person at this browser just gave their password: keep their session.
            update_session_auth_hash(request._request, user)
        return Response(UserOutputSerializer(user).data)

    @extend_schema(request=UserUpdateInputSerializer, responses=UserOutputSerializer)
    def put(self, request: Request, username: str) -> Response:
        return self.patch(request, username)

    @extend_schema(
        parameters=[UserDeleteQuerySerializer],
        responses={
            204: None,
            409: OpenApiResponse(UserOwnsSerializer, description="What the user still owns"),
        },
    )
    def delete(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        query = UserDeleteQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        heir = query.validated_data.get("transfer_to")
        services.user_delete(
            actor=request.user,
            user=user,
            transfer_to=selectors.user_get_heir(username=heir) if heir else None,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenOutputSerializer(serializers.ModelSerializer):
    expires = serializers.DateTimeField(
        source="expires_at", allow_null=True, help_text="null: never expires"
    )
    last_used = serializers.DateTimeField(
        source="last_used_at", allow_null=True, help_text="null: never used"
    )
    created = serializers.DateTimeField(source="created_at")
    scopes = serializers.ListField(
        source="scope_list",
        child=serializers.ChoiceField(choices=scopes.ALL),
        help_text="read: safe methods only; write: everything but account administration; "
        "admin: password, email, role, tokens and users.",
    )

    class Meta:
        model = AccessToken
        fields = ["id", "name", "hint", "scopes", "created", "expires", "last_used"]


class TokenCreatedSerializer(TokenOutputSerializer):
    token = serializers.CharField(help_text="The secret: shown only this once.")

    class Meta(TokenOutputSerializer.Meta):
        fields = [*TokenOutputSerializer.Meta.fields, "token"]


class TokenCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, default="api")
    expires = serializers.DateTimeField(required=False, allow_null=True, default=None)
    scopes = serializers.MultipleChoiceField(
        choices=scopes.ALL,
        required=False,
        # DRF takes any iterable; a tuple (not the set the stubs ask for) keeps the
        # schema's default in one order.
        default=scopes.DEFAULT,  # type: ignore[arg-type]
        allow_empty=False,
        help_text="What the token may do (default: read and write). A token creates "
        "tokens only with scopes it has itself.",
    )

    def validate_expires(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value


def _token_created_response(token: AccessToken, secret: str) -> Response:
    # The secret is only in this response, never stored (``TokenCreatedSerializer`` in the schema).
    # Location: the token's URL, which revokes it (DELETE); a token has no GET of its own.
    body = {**TokenOutputSerializer(token).data, "token": secret}
    return created(body, "user-token-detail", username=token.user.username, token_id=token.pk)


class LoginTokenInputSerializer(TokenCreateInputSerializer):
    username = serializers.CharField()
    password = serializers.CharField(write_only=True)


class AuthTokenApi(APIView):
    """Exchange a username and password for a new personal access token, of any scopes.

    Failed attempts count towards the sign-in lock-out shared with the web and
    admin forms (``accounts.logins``): 429 with a plain message while locked out.
    """

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=LoginTokenInputSerializer,
        responses={
            201: TokenCreatedSerializer,
            401: OpenApiResponse(description="Wrong username or password"),
            429: OpenApiResponse(
                description="Locked out after too many failed sign-ins for this username or "
                "from this address; the message and Retry-After say when to try again"
            ),
        },
        auth=[],
        parameters=[LOCATION],
    )
    def post(self, request: Request) -> Response:
        data = LoginTokenInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user = logins.password_check(
            request=request, username=values["username"], password=values["password"]
        )
        if user is None:
            raise AuthenticationFailed("Wrong username or password.")
        token, secret = services.token_create(
            actor=user,
            user=user,
            name=values["name"],
            expires_at=values["expires"],
            scopes_wanted=values["scopes"],
        )
        return _token_created_response(token, secret)

    def get_authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def _request_token(request: Request) -> AccessToken | None:
    """The personal access token authenticating ``request``, if one does."""
    return request.auth if isinstance(request.auth, AccessToken) else None


class TokenListCreateApi(generics.ListCreateAPIView):
    account_administration = True  # creating tokens needs a token's admin scope
    queryset = AccessToken.objects.none()  # the model, for the schema; ``get_queryset`` reads
    serializer_class = TokenOutputSerializer
    filter_backends = FILTER_BACKENDS
    ordering_fields = ["name", "created_at", "expires_at", "last_used_at"]

    def get_queryset(self) -> QuerySet[AccessToken]:
        user = selectors.user_get_managed(actor=self.request.user, username=self.kwargs["username"])
        return selectors.token_list(user=user)

    @extend_schema(
        request=TokenCreateInputSerializer,
        responses={201: TokenCreatedSerializer},
        parameters=[LOCATION],
    )
    def post(self, request: Request, username: str) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        data = TokenCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, secret = services.token_create(
            actor=request.user,
            user=user,
            name=data.validated_data["name"],
            expires_at=data.validated_data["expires"],
            scopes_wanted=data.validated_data["scopes"],
            via_token=_request_token(request),
        )
        return _token_created_response(token, secret)


class TokenDetailApi(APIView):
    account_administration = True

    @extend_schema(responses={204: None})
    def delete(self, request: Request, username: str, token_id: int) -> Response:
        user = selectors.user_get_managed(actor=request.user, username=username)
        token = selectors.token_get(user=user, token_id=token_id)
        services.token_revoke(actor=request.user, token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)
