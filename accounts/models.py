"""Users with a role, their personal access tokens, and the audit log."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, PermissionsMixin, UserManager
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from accounts import scopes as token_scopes

USERNAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,149}"

RESERVED_USERNAMES = frozenset({"me"})

_username_format = RegexValidator(
    rf"^{USERNAME_PATTERN}\Z",
    "A username has letters, digits, '.', '_' and '-', and starts with a letter or digit.",
)


def username_validator(value: str) -> None:
    _username_format(value)
    if value.lower() in RESERVED_USERNAMES:
        raise ValidationError(f"'{value}' is reserved.")


class Role(models.TextChoices):
    USER = "user", "User"
    MODERATOR = "moderator", "Moderator"
    ADMINISTRATOR = "administrator", "Administrator"


class BaasUserManager(UserManager):
    def create_superuser(self, username, email=None, password=None, **extra_fields):
        extra_fields.setdefault("role", Role.ADMINISTRATOR)
        extra_fields.setdefault("is_superuser", True)
        return self._create_user(username, email, password, **extra_fields)

    def _create_user(self, username, email, password, **extra_fields):
        extra_fields.pop("is_staff", None)  # derived from the role, not stored
        # Django's own (private) step of create_user and create_superuser, which the stubs
        # leave out; create_superuser above skips Django's, which insists on is_staff.
        return super()._create_user(  # type: ignore[misc]
            username, email, password, **extra_fields
        )


class User(AbstractBaseUser, PermissionsMixin):
    """A BAAS user. ``role`` decides what they may do; a superuser is an administrator."""

    username = models.CharField(
        max_length=150,
        unique=True,
        validators=[username_validator],
        help_text="Used in /api/user/<name>/ paths.",
    )
    email = models.EmailField()
    display_name = models.CharField(max_length=150, blank=True)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.USER)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)
    storage_quota = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Bytes on disk this user's images may take (empty: no limit). "
        "Set by administrators; uploads beyond it are refused with 413.",
    )

    objects = BaasUserManager()

    USERNAME_FIELD = "username"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["email"]

    class Meta:
        ordering = ["username"]
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.username

    @property
    def is_administrator(self) -> bool:
        return self.is_superuser or self.role == Role.ADMINISTRATOR

    @property
    def is_moderator(self) -> bool:
        return self.role == Role.MODERATOR

    @property
    def is_staff(self) -> bool:
        """Django admin's notion of staff: who may enter admin (``rules.can_use_admin``).

        Moderators enter it too, limited there to the system images assigned to them.
        """
        return self.is_active and (self.is_administrator or self.is_moderator)

    def has_perm(self, perm: str, obj: models.Model | None = None) -> bool:
        return (self.is_active and self.is_administrator) or super().has_perm(perm, obj)

    def has_module_perms(self, app_label: str) -> bool:
        return (self.is_active and self.is_administrator) or super().has_module_perms(app_label)

    def get_full_name(self) -> str:
        return self.display_name or self.username

    def get_short_name(self) -> str:
        return self.username


def token_digest(secret: str) -> str:
    """Tokens are long random strings, so one SHA-256 is a safe hash for them."""
    return hashlib.sha256(secret.encode()).hexdigest()


class AccessToken(models.Model):
    """A personal access token. Only its SHA-256 is stored; the secret is shown once."""

    PREFIX = "baas_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=100)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(max_length=12, editable=False, help_text="First characters")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    scopes = models.CharField(
        max_length=32,
        default=token_scopes.to_text(token_scopes.DEFAULT),
        validators=[token_scopes.validate_text],
        help_text="What the token may do: read, write, admin (accounts.scopes), space-separated.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.user} / {self.name}"

    @property
    def scope_list(self) -> tuple[str, ...]:
        return token_scopes.from_text(self.scopes)

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


class AuditEvent(models.Model):
    """Who did what, to what, and when, for every state change that matters."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor} {self.action} {self.target_type}"
