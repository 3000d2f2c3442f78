"""The second factor for web sign-in: TOTP (RFC 6238, via pyotp) and single-use recovery
codes. Every state change is one ``do_*`` action with its audit row (``auth.2fa.*``).

A code is accepted for the current 30 s step or the one before or after (clock drift); a
step once used is refused afterwards (``last_step``), so a code seen over a shoulder cannot
be replayed. Wrong codes count against the ``auth`` rate limit per user and per address
(10 a minute): 6 digits cannot be guessed at that pace.
"""

from __future__ import annotations

import time

import pyotp
import segno
from django.conf import settings
from django.utils import timezone

from cmdop_server import audit, credentials, ratelimit, sealing
from cmdop_server.errors import ApiError
from cmdop_server.identity.models import Membership, RecoveryCode, TotpDevice, User, Workspace
from cmdop_server.permissions import Role

ISSUER = "CMDOP"
DRIFT_STEPS = 1


def has_second_factor(user: User) -> bool:
    return TotpDevice.objects.filter(user=user, confirmed_at__isnull=False).exists()


def required_by(user: User) -> list[str]:
    """Slugs of the user's workspaces whose owner requires a second factor."""
    return list(Membership.unscoped.filter(user=user, workspace__require_2fa=True)
                .values_list("workspace__slug", flat=True))


def secret_of(device: TotpDevice) -> str:
    """The device's secret in clear (stored sealed: cmdop_server.sealing)."""
    return sealing.unseal(device.secret)


def provisioning(device: TotpDevice, user: User) -> tuple[str, str]:
    """The otpauth:// URI and the same as a QR code (inline SVG, no script or style)."""
    uri = pyotp.TOTP(secret_of(device)).provisioning_uri(name=user.username,
                                                         issuer_name=ISSUER)
    return uri, segno.make(uri, error="m").svg_inline(scale=4, title="CMDOP TOTP")


def do_start_enrolment(user: User, ip: str | None) -> TotpDevice:
    """A new, unconfirmed secret (replacing an unfinished one); a confirmed one stays."""
    with audit.action():
        device = TotpDevice.objects.select_for_update().filter(user=user).first()
        if device is not None and device.confirmed_at is not None:
            raise ApiError(409, "conflict", "Two-factor authentication is already on.")
        if device is None:
            device = TotpDevice(user=user)
        device.secret, device.last_step = sealing.seal(credentials.new_totp_secret()), 0
        device.save()
        audit.record("auth.2fa.enrol_start", user=user, method="totp", ip=ip)
    return device


def _matching_step(device: TotpDevice, code: str, now: float) -> int | None:
    totp = pyotp.TOTP(secret_of(device))
    step = int(now) // totp.interval
    for candidate in range(step - DRIFT_STEPS, step + DRIFT_STEPS + 1):
        if candidate > device.last_step and totp.verify(
                code, for_time=candidate * totp.interval, valid_window=0):
            return candidate
    return None


def _limit(user: User, ip: str | None) -> None:
    ratelimit.enforce("auth", f"2fa:{user.pk}", f"ip:{ip}")


def do_confirm_enrolment(user: User, code: str, ip: str | None) -> list[str]:
    """Turn TOTP on once the authenticator shows a right code; the recovery codes (clear,
    shown once) come back. Raises ApiError(400) for a wrong code."""
    _limit(user, ip)
    with audit.action():
        device = TotpDevice.objects.select_for_update().filter(user=user).first()
        if device is None or device.confirmed_at is not None:
            raise ApiError(409, "conflict", "Start the enrolment again.")
        step = _matching_step(device, code.strip(), time.time())
        if step is None:
            audit.record("auth.2fa.enrol", success=False, user=user, method="totp", ip=ip,
                         reason="wrong_code")
            return []
        device.confirmed_at, device.last_step = timezone.now(), step
        device.save(update_fields=["confirmed_at", "last_step"])
        codes = _new_recovery_codes(user)
        audit.record("auth.2fa.enrol", user=user, method="totp", ip=ip)
    return codes


def _new_recovery_codes(user: User) -> list[str]:
    RecoveryCode.objects.filter(user=user).delete()
    codes = [credentials.new_recovery_code()
             for _ in range(credentials.RECOVERY_CODES_PER_USER)]
    RecoveryCode.objects.bulk_create(
        RecoveryCode(user=user, code_hash=credentials.sha256_hex(c)) for c in codes)
    return codes


def do_verify(user: User, typed: str, purpose: str, ip: str | None) -> bool:
    """Check a TOTP code or a recovery code (used up by this) for ``purpose`` (sign_in,
    device_approve, disable). Rate-limited; every attempt is audited."""
    _limit(user, ip)
    typed = typed.strip()
    with audit.action():
        device = (TotpDevice.objects.select_for_update()
                  .filter(user=user, confirmed_at__isnull=False).first())
        if device is None:
            return False
        method, ok = "totp", False
        if typed.isdigit():
            step = _matching_step(device, typed, time.time())
            if step is not None:
                device.last_step, ok = step, True
                device.save(update_fields=["last_step"])
        else:
            method = "recovery_code"
            digest = credentials.sha256_hex(credentials.normalize_recovery_code(typed))
            spare = (RecoveryCode.objects.select_for_update()
                     .filter(user=user, used_at__isnull=True, code_hash=digest).first())
            if spare is not None and credentials.same_digest(
                    spare.code_hash, credentials.normalize_recovery_code(typed)):
                spare.used_at, ok = timezone.now(), True
                spare.save(update_fields=["used_at"])
        audit.record("auth.2fa.verify", success=ok, user=user, method=method, ip=ip,
                     purpose=purpose, reason="" if ok else "wrong_code")
    return ok


def do_disable(user: User, ip: str | None) -> None:
    """Turn TOTP off (the caller has just verified a code). Refused while a workspace of the
    user requires it."""
    slugs = required_by(user)
    if slugs:
        raise ApiError(403, "forbidden",
                       f"Workspace {', '.join(slugs)} requires two-factor authentication.")
    with audit.action():
        TotpDevice.objects.filter(user=user).delete()
        RecoveryCode.objects.filter(user=user).delete()
        audit.record("auth.2fa.disable", user=user, method="totp", ip=ip)


def do_set_required(actor: Membership, required: bool, ip: str | None) -> Workspace:
    """The workspace owner's rule. An owner without a second factor cannot require one
    (they would lock themselves out of the web)."""
    if actor.role != Role.OWNER:
        raise ApiError(403, "forbidden", "Only the workspace owner sets this.")
    if required and not has_second_factor(actor.user):
        raise ApiError(409, "conflict", "Turn on your own two-factor authentication first.")
    with audit.action():
        ws = Workspace.objects.select_for_update().get(pk=actor.workspace_id)
        ws.require_2fa = required
        ws.save(update_fields=["require_2fa"])
        audit.record("workspace.2fa_required", user=actor.user, workspace=ws, ip=ip,
                     required=required)
    return ws


def sign_in_window() -> int:
    """Seconds a password-verified sign-in may wait for its second step."""
    return int(getattr(settings, "CMDOP_2FA_SIGN_IN_WINDOW", 300))
