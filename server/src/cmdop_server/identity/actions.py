"""Every state change of identity and tenancy: one ``do_*`` function each, one transaction
and one audit row per call (STYLE rule 8). Views call these and stay thin."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from cmdop_server import audit, credentials
from cmdop_server.errors import ApiError
from cmdop_server.identity.models import (
    AccessToken,
    ApiKey,
    DeviceAuthorization,
    Membership,
    RefreshToken,
    TokenFamily,
    User,
    Workspace,
)
from cmdop_server.permissions import GRANTABLE, Action, Role, can

MAX_WRONG_GUESSES = 5


class OAuthError(ApiError):
    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(status, code, detail)


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    refresh_token: str
    expires_in: int
    scope: str


# ---- workspaces and members ---------------------------------------------------------------


def do_create_workspace(user: User, slug: str, name: str, ip: str | None = None) -> Workspace:
    try:
        with audit.action():
            workspace = Workspace.objects.create(slug=slug, name=name)
            Membership(workspace=workspace, user=user, role=Role.OWNER).save()
            audit.record("workspace.create", user=user, workspace=workspace, ip=ip, slug=slug)
    except IntegrityError:
        raise ApiError(409, "conflict", "A workspace with this slug exists.") from None
    return workspace


def do_update_workspace(actor: Membership, changes: dict, ip: str | None = None) -> Workspace:
    with audit.action():
        workspace = Workspace.objects.select_for_update().get(pk=actor.workspace_id)
        for field, value in changes.items():
            setattr(workspace, field, value)
        workspace.save()
        audit.record("workspace.update", user=actor.user, workspace=workspace, ip=ip,
                     fields=sorted(changes))
    return workspace


def do_add_member(actor: Membership, user: User, role: Role, ip: str | None = None) -> Membership:
    if role not in GRANTABLE[Role(actor.role)]:
        raise ApiError(403, "forbidden", f"A {actor.role} cannot grant the {role} role.")
    if role == Role.GUEST and not actor.workspace.guests_enabled:
        raise ApiError(400, "bad_request", "Guests are not enabled in this workspace.")
    try:
        with audit.action():
            membership = Membership(workspace=actor.workspace, user=user, role=role)
            membership.save()
            audit.record("member.add", user=actor.user, workspace=actor.workspace, ip=ip,
                         member_id=user.pk, role=role)
    except IntegrityError:
        raise ApiError(409, "conflict", "That user is already a member.") from None
    return membership


def _owners_left(workspace: Workspace, excluding: Membership) -> int:
    return (Membership.objects.in_workspace(workspace).filter(role=Role.OWNER)
            .exclude(pk=excluding.pk).count())


def do_change_role(actor: Membership, member: Membership, role: Role, ip=None) -> Membership:
    with audit.action():
        member = Membership.objects.in_workspace(actor.workspace).select_for_update().get(
            pk=member.pk)
        if member.role == Role.OWNER and role != Role.OWNER and not _owners_left(
                actor.workspace, member):
            raise ApiError(409, "conflict", "A workspace keeps at least one owner.")
        old, member.role = member.role, role
        member.save(update_fields=["role"])
        audit.record("member.role", user=actor.user, workspace=actor.workspace, ip=ip,
                     member_id=member.user_id, old=old, new=role)
    return member


def do_remove_member(actor: Membership, member: Membership, ip=None) -> None:
    with audit.action():
        if member.role == Role.OWNER and not _owners_left(actor.workspace, member):
            raise ApiError(409, "conflict", "A workspace keeps at least one owner.")
        ApiKey.objects.in_workspace(actor.workspace).filter(
            user_id=member.user_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
        member.delete()
        audit.record("member.remove", user=actor.user, workspace=actor.workspace, ip=ip,
                     member_id=member.user_id)


# ---- API keys -----------------------------------------------------------------------------


def do_create_api_key(actor: Membership, name: str, ip=None) -> tuple[ApiKey, str]:
    clear = credentials.new_api_key(settings.CMDOP_API_KEY_PREFIX)
    with audit.action():
        key = ApiKey(workspace=actor.workspace, user=actor.user, name=name,
                     prefix=settings.CMDOP_API_KEY_PREFIX, last_four=clear[-4:],
                     key_hash=credentials.sha256_hex(clear))
        key.save()
        audit.record("auth.api_key.create", user=actor.user, workspace=actor.workspace, ip=ip,
                     method="api_key", api_key_id=key.pk)
    return key, clear


def do_revoke_api_key(actor: Membership, key_id: int, ip=None) -> ApiKey:
    with audit.action():
        keys = ApiKey.objects.in_workspace(actor.workspace).select_for_update()
        if not can(actor.role, Action.API_KEY_MANAGE_ALL):
            keys = keys.filter(user=actor.user)
        key = keys.filter(pk=key_id).first()
        if key is None:
            raise ApiError(404, "not_found", "No such API key.")
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
        audit.record("auth.api_key.revoke", user=actor.user, workspace=actor.workspace, ip=ip,
                     method="api_key", api_key_id=key.pk)
    return key


# ---- tokens -------------------------------------------------------------------------------


def _issue(family: TokenFamily) -> TokenGrant:
    """New access + refresh token for ``family``; caller holds the transaction."""
    now = timezone.now()
    access, refresh = credentials.new_access_token(), credentials.new_refresh_token()
    AccessToken.objects.create(
        family=family, token_hash=credentials.sha256_hex(access),
        expires_at=now + timedelta(seconds=settings.CMDOP_ACCESS_TOKEN_TTL))
    RefreshToken.objects.create(
        family=family, token_hash=credentials.sha256_hex(refresh),
        expires_at=now + timedelta(seconds=settings.CMDOP_REFRESH_TOKEN_TTL))
    return TokenGrant(access, refresh, settings.CMDOP_ACCESS_TOKEN_TTL, family.scope)


def _revoke_family(family: TokenFamily, reason: str) -> None:
    if family.revoked_at is None:
        family.revoked_at = timezone.now()
        family.revoked_reason = reason
        family.save(update_fields=["revoked_at", "revoked_reason"])


def do_refresh(raw_refresh: str, client_id: str, ip: str | None) -> TokenGrant:
    """Rotate a refresh token. Presenting a used one revokes its family (RFC 9700 §4.14.2).

    Concurrency: the token row is locked (SELECT … FOR UPDATE). Of two simultaneous
    refreshes with the same token the first wins; the second then finds it used, which is
    indistinguishable from replay by a thief, so it gets ``invalid_grant`` and the family
    (including the winner's new tokens) is revoked.
    """
    digest = credentials.sha256_hex(raw_refresh)
    outcome: TokenGrant | OAuthError
    with audit.action():
        token = (RefreshToken.objects.select_for_update(of=("self",))
                 .select_related("family", "family__user").filter(token_hash=digest).first())
        if token is None or not credentials.same_digest(token.token_hash, raw_refresh):
            audit.record("auth.token.refresh", success=False, method="refresh_token", ip=ip,
                         reason="unknown")
            outcome = OAuthError("invalid_grant", "Unknown refresh token.")
        else:
            family, now = token.family, timezone.now()
            reason = None
            if family.client_id != client_id:
                reason = "client_mismatch"
            elif token.used_at is not None:
                _revoke_family(family, "refresh_reuse")
                reason = "reuse"
            elif family.revoked_at is not None:
                reason = "revoked"
            elif token.expires_at <= now:
                reason = "expired"
            if reason:
                audit.record("auth.token.refresh", success=False, user=family.user,
                             method="refresh_token", ip=ip, reason=reason, family_id=family.pk)
                outcome = OAuthError("invalid_grant", "Refresh token is not valid.")
            else:
                token.used_at = now
                token.save(update_fields=["used_at"])
                outcome = _issue(family)
                audit.record("auth.token.refresh", user=family.user, method="refresh_token",
                             ip=ip, family_id=family.pk)
    if isinstance(outcome, OAuthError):
        raise outcome
    return outcome


def do_revoke_family(user: User, family_id: int, reason: str, ip=None) -> TokenFamily:
    with audit.action():
        family = (TokenFamily.objects.select_for_update()
                  .filter(pk=family_id, user=user).first())
        if family is None:
            raise ApiError(404, "not_found", "No such token.")
        _revoke_family(family, reason)
        audit.record("auth.token.revoke", user=user, method="token", ip=ip, family_id=family.pk)
    return family


def do_revoke_token(raw: str, ip=None) -> None:
    """RFC 7009: revoke the family of an access or refresh token; unknown tokens are fine."""
    digest = credentials.sha256_hex(raw)
    model = RefreshToken if raw.startswith(credentials.REFRESH_TOKEN_PREFIX) else AccessToken
    with audit.action():
        row = model.objects.select_related("family").filter(token_hash=digest).first()
        if row is not None:
            _revoke_family(row.family, "revoked_by_client")
            audit.record("auth.token.revoke", user=row.family.user_id, method="token", ip=ip,
                         family_id=row.family_id)


# ---- device authorization (RFC 8628) ------------------------------------------------------


@dataclass(frozen=True)
class DeviceStart:
    device_code: str
    user_code: str
    expires_in: int
    interval: int


def do_start_device_authorization(client_id: str, scope: str, device_name: str,
                                  ip: str | None, agent: str) -> DeviceStart:
    now = timezone.now()
    with audit.action():
        for _ in range(10):
            user_code = credentials.new_user_code()
            lookup = credentials.user_code_lookup(user_code)
            clash = DeviceAuthorization.objects.filter(
                user_code_lookup=lookup, status=DeviceAuthorization.Status.PENDING,
                expires_at__gt=now).exists() or DeviceAuthorization.objects.filter(
                user_code_hash=credentials.sha256_hex(user_code)).exists()
            if not clash:
                break
        else:
            raise ApiError(503, "unavailable", "No free user code; try again.")
        device_code = credentials.new_device_code()
        da = DeviceAuthorization.objects.create(
            device_code_hash=credentials.sha256_hex(device_code),
            user_code_hash=credentials.sha256_hex(user_code), user_code_lookup=lookup,
            client_id=client_id, scope=scope, device_name=device_name[:200],
            requester_ip=ip or None, requester_agent=agent[:200],
            expires_at=now + timedelta(seconds=settings.CMDOP_DEVICE_CODE_TTL),
            interval=settings.CMDOP_DEVICE_POLL_INTERVAL)
        audit.record("auth.device.start", method="device_code", ip=ip, client_id=client_id,
                     device_authorization_id=da.pk)
    return DeviceStart(device_code, user_code, settings.CMDOP_DEVICE_CODE_TTL, da.interval)


def do_poll_device_token(device_code: str, client_id: str, ip: str | None) -> TokenGrant:
    """One poll of the token endpoint (RFC 8628 §3.4/3.5). Polling faster than the
    interval answers ``slow_down`` and adds 5 s to this device code's interval for good."""
    digest = credentials.sha256_hex(device_code)
    Status = DeviceAuthorization.Status
    outcome: TokenGrant | OAuthError
    with audit.action():
        da = (DeviceAuthorization.objects.select_for_update().filter(device_code_hash=digest)
              .first())
        now = timezone.now()
        if (da is None or da.client_id != client_id
                or not credentials.same_digest(da.device_code_hash, device_code)):
            audit.record("auth.token.issue", success=False, method="device_code", ip=ip,
                         reason="unknown_device_code", client_id=client_id)
            outcome = OAuthError("invalid_grant", "Unknown device code.")
        elif da.status == Status.REDEEMED:
            audit.record("auth.token.issue", success=False, user=da.user, method="device_code",
                         ip=ip, reason="device_code_reused", client_id=client_id)
            outcome = OAuthError("invalid_grant", "This device code was already used.")
        elif da.status == Status.DEAD or da.expires_at <= now:
            outcome = OAuthError("expired_token", "The device code expired; start again.")
        elif da.last_polled_at and (now - da.last_polled_at).total_seconds() < da.interval:
            da.interval += 5
            da.last_polled_at = now
            da.save(update_fields=["interval", "last_polled_at"])
            outcome = OAuthError("slow_down", f"Poll at most every {da.interval} seconds.")
        else:
            da.last_polled_at = now
            if da.status == Status.PENDING:
                outcome = OAuthError("authorization_pending", "The user has not decided yet.")
            elif da.status == Status.DENIED or da.user is None:  # approving sets the user
                outcome = OAuthError("access_denied", "The user denied the request.")
            else:
                da.status = Status.REDEEMED
                family = TokenFamily.objects.create(user=da.user, client_id=da.client_id,
                                                    scope=da.scope, device_name=da.device_name)
                outcome = _issue(family)
                audit.record("auth.token.issue", user=da.user, method="device_code", ip=ip,
                             client_id=da.client_id, family_id=family.pk)
            da.save(update_fields=["status", "last_polled_at"])
    if isinstance(outcome, OAuthError):
        raise outcome
    return outcome


def do_find_user_code(user: User, typed: str, ip: str | None) -> DeviceAuthorization | None:
    """The pending request this code belongs to, or None. A wrong guess counts against every
    live code sharing its first half; the fifth kills it (RFC 8628 §5.1)."""
    code = credentials.normalize_user_code(typed)
    valid = (len(code) == credentials.USER_CODE_LENGTH
             and all(ch in credentials.USER_CODE_ALPHABET for ch in code))
    found = None
    with audit.action():
        if valid:
            now = timezone.now()
            candidates = list(DeviceAuthorization.objects.select_for_update().filter(
                user_code_lookup=credentials.user_code_lookup(code),
                status=DeviceAuthorization.Status.PENDING, expires_at__gt=now))
            found = next((c for c in candidates
                          if credentials.same_digest(c.user_code_hash, code)), None)
            if found is None:
                for da in candidates:
                    da.wrong_guesses += 1
                    if da.wrong_guesses >= MAX_WRONG_GUESSES:
                        da.status = DeviceAuthorization.Status.DEAD
                    da.save(update_fields=["wrong_guesses", "status"])
        if found is None:
            audit.record("auth.device.code", success=False, user=user, method="user_code",
                         ip=ip, reason="wrong_code")
    return found


def do_decide_device(user: User, typed: str, approve: bool, ip: str | None) -> bool:
    """Approve or deny the request behind ``typed`` (re-checked here, not trusted from the
    form's earlier step). Returns False when the code is no longer valid."""
    da = do_find_user_code(user, typed, ip)
    if da is None:
        return False
    with audit.action():
        da = DeviceAuthorization.objects.select_for_update().get(pk=da.pk)
        if da.status != DeviceAuthorization.Status.PENDING or da.expires_at <= timezone.now():
            return False
        da.status = (DeviceAuthorization.Status.APPROVED if approve
                     else DeviceAuthorization.Status.DENIED)
        da.user = user
        da.save(update_fields=["status", "user"])
        audit.record("auth.device.approve" if approve else "auth.device.deny", user=user,
                     method="device_code", ip=ip, client_id=da.client_id,
                     device_authorization_id=da.pk)
    return True


# ---- housekeeping -------------------------------------------------------------------------

PURGE_GRACE = timedelta(days=1)


def do_purge_dead_credentials() -> tuple[int, int]:
    """(device authorizations, token families) deleted; kept a day past death for support."""
    cutoff = timezone.now() - PURGE_GRACE
    with audit.action():
        devices, _ = DeviceAuthorization.objects.filter(expires_at__lt=cutoff).delete()
        dead = (TokenFamily.objects.exclude(refresh__expires_at__gte=cutoff)
                | TokenFamily.objects.filter(revoked_at__lt=cutoff))
        ids = list(dead.values_list("pk", flat=True).distinct())
        TokenFamily.objects.filter(pk__in=ids).delete()
        audit.record("auth.purge", device_authorizations=devices, token_families=len(ids))
    return devices, len(ids)
