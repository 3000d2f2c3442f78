"""Who a bearer credential belongs to. Access tokens and API keys, looked up by digest.

``last_used_at`` is written at most once per CMDOP_LAST_USED_RESOLUTION seconds per
credential: a conditional UPDATE that only matches when the stored value is stale, so a
storm of requests with one token causes one write per window, not one per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from cmdop_server import credentials
from cmdop_server.identity.models import AccessToken, ApiKey, User, Workspace


class SignedInRequest(HttpRequest):
    """A dashboard request behind ``@login_required``. Django types ``request.user`` as a
    user or AnonymousUser; the decorator has ruled the latter out, and views say so."""

    user: User


@dataclass(frozen=True)
class Principal:
    user: User
    method: str  # "access_token" | "api_key"
    family_id: int | None = None
    api_key_id: int | None = None
    workspace: Workspace | None = None  # API keys are bound to one workspace


def _touch(manager, pk: int, last_used_at) -> None:
    now = timezone.now()
    stale = now - timedelta(seconds=settings.CMDOP_LAST_USED_RESOLUTION)
    if last_used_at is not None and last_used_at > stale:
        return
    manager.filter(pk=pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale)).update(last_used_at=now)


def authenticate_bearer(raw: str, scope: str) -> tuple[Principal | None, str]:
    """(principal, "") or (None, reason) for a presented bearer credential that may act in
    ``scope``: "api" (the user API; API keys have only this one) or "agent" (a machine
    enrolled through the device flow). An agent's tokens, kept on its machine, are
    therefore no way into the user API (docs/security-model.md)."""
    if raw.startswith(credentials.API_KEY_PREFIXES):
        if scope != "api":
            return None, "insufficient_scope"
        if not credentials.looks_like_api_key(raw):
            return None, "malformed_api_key"
        key = (ApiKey.unscoped.select_related("user", "workspace")
               .filter(key_hash=credentials.sha256_hex(raw)).first())
        if key is None or not credentials.same_digest(key.key_hash, raw):
            return None, "unknown_api_key"
        if key.revoked_at is not None:
            return None, "revoked_api_key"
        if not key.user.is_active:
            return None, "inactive_user"
        _touch(ApiKey.unscoped, key.pk, key.last_used_at)
        return Principal(key.user, "api_key", api_key_id=key.pk, workspace=key.workspace), ""
    if not raw.startswith(credentials.ACCESS_TOKEN_PREFIX):
        return None, "malformed_token"
    token = (AccessToken.objects.select_related("family", "family__user")
             .filter(token_hash=credentials.sha256_hex(raw)).first())
    if token is None or not credentials.same_digest(token.token_hash, raw):
        return None, "unknown_token"
    if token.family.revoked_at is not None:
        return None, "revoked_token"
    if scope not in token.family.scope.split():
        return None, "insufficient_scope"
    if token.expires_at <= timezone.now():
        return None, "expired_token"
    if not token.family.user.is_active:
        return None, "inactive_user"
    _touch(AccessToken.objects, token.pk, token.last_used_at)
    return Principal(token.family.user, "access_token", family_id=token.family_id), ""
