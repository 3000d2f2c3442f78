"""Users, workspaces, memberships, and every credential: tokens, API keys, device codes.

Credentials are stored as SHA-256 hex digests only (``secrets.py`` says how each is made
and how much entropy it carries); the clear value exists in one HTTP response, never here.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone

from cmdop_server.permissions import Role
from cmdop_server.tenancy import WorkspaceOwned


class User(AbstractUser):
    pass


class Workspace(models.Model):
    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    guests_enabled = models.BooleanField(default=False)
    # The owner's rule: members sign in on the web only with a second factor (TOTP).
    # db_default: the previous release, which does not know the column, can still insert.
    require_2fa = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.slug


class Membership(WorkspaceOwned):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(WorkspaceOwned.Meta):
        constraints = [
            models.UniqueConstraint(fields=["workspace", "user"], name="one_membership_per_user")
        ]


class TokenFamily(models.Model):
    """One device-flow grant: every access/refresh token it ever issued, revoked together."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="token_families")
    client_id = models.CharField(max_length=64)
    scope = models.CharField(max_length=200, blank=True)
    device_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=64, blank=True)


class RefreshToken(models.Model):
    family = models.ForeignKey(TokenFamily, on_delete=models.CASCADE, related_name="refresh")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)


class AccessToken(models.Model):
    family = models.ForeignKey(TokenFamily, on_delete=models.CASCADE, related_name="access")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)


class ApiKey(WorkspaceOwned):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    last_four = models.CharField(max_length=4)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)


class DeviceAuthorization(models.Model):
    """RFC 8628 device authorization request, from issue to approval/denial and redemption."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        REDEEMED = "redeemed"
        DEAD = "dead"

    device_code_hash = models.CharField(max_length=64, unique=True)
    user_code_hash = models.CharField(max_length=64, unique=True)
    user_code_lookup = models.CharField(max_length=64, db_index=True)
    client_id = models.CharField(max_length=64)
    scope = models.CharField(max_length=200, blank=True)
    device_name = models.CharField(max_length=200, blank=True)
    requester_ip = models.GenericIPAddressField(null=True, blank=True)
    requester_agent = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    interval = models.PositiveIntegerField()
    last_polled_at = models.DateTimeField(null=True, blank=True)
    wrong_guesses = models.PositiveSmallIntegerField(default=0)
    user = models.ForeignKey(User, null=True, blank=True, on_delete=models.CASCADE)


class TotpDevice(models.Model):
    """A user's authenticator (RFC 6238). The secret must be read back to check a code, so
    it is not hashed but sealed (cmdop_server.sealing: ``totp.secret_of`` opens it);
    ``last_step`` refuses a code's second use within its 30 s window."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="totp")
    secret = models.CharField(max_length=255)
    confirmed_at = models.DateTimeField(null=True, blank=True)  # null: enrolment not finished
    last_step = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)


class RecoveryCode(models.Model):
    """Single-use codes for a lost authenticator; stored as SHA-256 digests only."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="recovery_codes")
    code_hash = models.CharField(max_length=64, unique=True)
    used_at = models.DateTimeField(null=True, blank=True)
