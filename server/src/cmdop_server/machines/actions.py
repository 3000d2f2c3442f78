"""Every state change of machines: one ``do_*`` each, one transaction, audit rows committed
with it (STYLE rule 8). A refused attempt is audited after its transaction rolled back."""

from __future__ import annotations

import re
from datetime import timedelta

from django.db import IntegrityError
from django.db.models import F
from django.utils import timezone

from cmdop_server import audit, credentials
from cmdop_server.errors import ApiError
from cmdop_server.identity.models import Membership, TokenFamily, User, Workspace
from cmdop_server.machines import tokens
from cmdop_server.machines.models import AgentBoot, JoinToken, Machine
from cmdop_server.permissions import Action, can

HEARTBEAT_INTERVAL = 30
POLL_TIMEOUT = 25
JOIN_TOKEN_MAX_TTL = 7 * 24 * 3600
MIN_AGENT_VERSION = (0, 1, 0)
_HOSTNAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,251}[a-z0-9])?$")
_VERSION_RE = re.compile(r"^(\d{1,4})\.(\d{1,4})\.(\d{1,4})")


class Refused(ApiError):
    """An enrollment refusal: audited (outside the rolled-back transaction) and answered."""


def check_agent_version(version: str) -> None:
    match = _VERSION_RE.match(version or "")
    if match is None:
        raise ApiError(400, "bad_request", "version is not MAJOR.MINOR.PATCH.")
    if tuple(int(p) for p in match.groups()) < MIN_AGENT_VERSION:
        raise ApiError(426, "unsupported_version",
                       "This agent is too old for this control plane; upgrade it.")


def normalize_hostname(hostname: str) -> str:
    name = (hostname or "").strip().lower()
    if not _HOSTNAME_RE.match(name):
        raise ApiError(400, "bad_request", "hostname is not a valid host name.")
    return name


# ---- join tokens ---------------------------------------------------------------------------


def do_create_join_token(actor: Membership, name: str, ttl_seconds: int, usage_limit: int = 1,
                         ip: str | None = None) -> tuple[JoinToken, str]:
    if not can(actor.role, Action.MACHINE_MANAGE):
        raise ApiError(403, "forbidden", "Only Owners and Admins create join tokens.")
    if not 60 <= ttl_seconds <= JOIN_TOKEN_MAX_TTL or not 1 <= usage_limit <= 10_000:
        raise ApiError(400, "bad_request", "ttl must be 60 s..7 days, usage_limit 1..10000.")
    raw = tokens.new_join_token()
    with audit.action():
        jt = JoinToken(workspace=actor.workspace, name=name, created_by=actor.user,
                       token_hash=credentials.sha256_hex(raw), usage_limit=usage_limit,
                       expires_at=timezone.now() + timedelta(seconds=ttl_seconds))
        jt.save()
        audit.record("machine.join_token.create", user=actor.user, workspace=actor.workspace,
                     ip=ip, join_token_id=jt.pk, usage_limit=usage_limit, ttl=ttl_seconds)
    return jt, raw


def do_revoke_join_token(actor: Membership, token_id: int, ip: str | None = None) -> JoinToken:
    with audit.action():
        jt = JoinToken.objects.in_workspace(actor.workspace).select_for_update().get(pk=token_id)
        if jt.revoked_at is None:
            jt.revoked_at = timezone.now()
            jt.save(update_fields=["revoked_at"])
        audit.record("machine.join_token.revoke", user=actor.user, workspace=actor.workspace,
                     ip=ip, join_token_id=jt.pk)
    return jt


# ---- enrollment ----------------------------------------------------------------------------


def _new_machine(workspace: Workspace, hostname: str, os_name: str, version: str,
                 **fields) -> Machine:
    if Machine.objects.in_workspace(workspace).filter(hostname=hostname).exists():
        raise Refused(409, "hostname_taken",
                      f"Another machine of workspace {workspace.slug} is named {hostname}.")
    machine = Machine(workspace=workspace, hostname=hostname, os=os_name[:200],
                      agent_version=version[:40], public_id=tokens.new_public_id("m_"),
                      heartbeat_interval=HEARTBEAT_INTERVAL, **fields)
    machine.save()
    return machine


def _audited_enrollment(fn, *, ip: str | None, hostname: str, method: str):
    """Run an enrollment transaction; a refusal is recorded after it rolled back."""
    try:
        return fn()
    except IntegrityError:
        # lost a race on (workspace, hostname) with a concurrent enrollment
        audit.record("machine.enroll", success=False, method=method, ip=ip,
                     reason="hostname_taken", hostname=hostname)
        raise ApiError(409, "hostname_taken", f"Another machine is named {hostname}.") from None
    except Refused as exc:
        audit.record("machine.enroll", success=False, method=method, ip=ip, reason=exc.code,
                     hostname=hostname)
        raise


def do_enroll_with_join_token(raw: str, hostname: str, os_name: str, version: str,
                              ip: str | None = None) -> tuple[Machine, str]:
    check_agent_version(version)
    hostname = normalize_hostname(hostname)
    credential = tokens.new_machine_credential()

    def enroll() -> tuple[Machine, str]:
        with audit.action():
            jt = (JoinToken.unscoped.select_for_update().select_related("workspace")
                  .filter(token_hash=credentials.sha256_hex(raw or "")).first())
            if jt is None or jt.revoked_at is not None:
                raise Refused(401, "join_token_invalid", "Unknown or revoked join token.")
            if jt.expires_at <= timezone.now():
                raise Refused(401, "join_token_expired", "The join token has expired.")
            if jt.uses >= jt.usage_limit:
                raise Refused(401, "join_token_exhausted", "The join token is used up.")
            jt.uses += 1
            jt.save(update_fields=["uses"])
            machine = _new_machine(jt.workspace, hostname, os_name, version,
                                   enrollment=Machine.Enrollment.JOIN_TOKEN, join_token=jt,
                                   credential_hash=credentials.sha256_hex(credential))
            audit.record("machine.enroll", workspace=jt.workspace, method="join_token", ip=ip,
                         machine=machine.public_id, hostname=hostname, join_token_id=jt.pk,
                         os=machine.os, version=machine.agent_version)
        return machine, credential

    return _audited_enrollment(enroll, ip=ip, hostname=hostname, method="join_token")


def do_enroll_with_device_flow(user: User, family_id: int, workspace_slug: str | None,
                               hostname: str, os_name: str, version: str,
                               ip: str | None = None) -> Machine:
    """A machine that authenticates with the OAuth tokens of ``family_id`` (agent login)."""
    check_agent_version(version)
    hostname = normalize_hostname(hostname)

    def enroll() -> Machine:
        with audit.action():
            family = TokenFamily.objects.select_for_update().get(pk=family_id)
            if "agent" not in family.scope.split():
                raise Refused(403, "forbidden", "This token was not granted the agent scope.")
            if Machine.unscoped.filter(token_family=family).exists():
                raise Refused(409, "already_enrolled", "These tokens already enrolled a machine.")
            membership = _enrolling_membership(user, workspace_slug)
            machine = _new_machine(membership.workspace, hostname, os_name, version,
                                   enrollment=Machine.Enrollment.DEVICE_FLOW,
                                   token_family=family, enrolled_by=user)
            audit.record("machine.enroll", user=user, workspace=membership.workspace,
                         method="device_flow", ip=ip, machine=machine.public_id,
                         hostname=hostname, os=machine.os, version=machine.agent_version)
        return machine

    return _audited_enrollment(enroll, ip=ip, hostname=hostname, method="device_flow")


def _enrolling_membership(user: User, workspace_slug: str | None) -> Membership:
    rows = Membership.unscoped.select_related("workspace").filter(user=user)
    if workspace_slug:
        rows = rows.filter(workspace__slug=workspace_slug)
    found = list(rows[:2])
    if len(found) != 1:
        raise Refused(400, "bad_request", "Name the workspace: you are in several or none.")
    if not can(found[0].role, Action.MACHINE_MANAGE):
        raise Refused(403, "forbidden", "Only Owners and Admins enroll machines.")
    return found[0]


def do_rotate_machine_credential(actor: Membership, machine_id: str,
                                 ip: str | None = None) -> tuple[Machine, str]:
    """A new credential; the old one stops working at once (hand the new one to the agent).
    Also what revives a machine whose handover lapsed, and it ends an open handover."""
    credential = tokens.new_machine_credential()
    with audit.action():
        machine = (Machine.objects.in_workspace(actor.workspace).select_for_update()
                   .get(public_id=machine_id, enrollment=Machine.Enrollment.JOIN_TOKEN))
        machine.previous_credential_hash = machine.credential_hash
        machine.credential_hash = credentials.sha256_hex(credential)
        machine.credential_rotated_at = timezone.now()
        machine.pending_credential_hash = machine.credential_handover_until = None
        machine.save(update_fields=["credential_hash", "credential_rotated_at",
                                    "previous_credential_hash", "pending_credential_hash",
                                    "credential_handover_until"])
        audit.record("machine.credential.rotate", user=actor.user, workspace=actor.workspace,
                     ip=ip, machine=machine.public_id)
    return machine, credential


# ---- credential handover: every agent to a new credential without going offline -----------
#
# Opened for a workspace's machines with a deadline; each agent gets its new credential in a
# heartbeat reply (its authenticated channel: the value never leaves the control plane and
# the agent), writes it, and confirms by using it. From that request on the old credential is
# refused. An agent that does not confirm before the deadline keeps neither: it is reported
# (``credential_state``) as needing a new credential, never left to fail unseen.

# The longest a handover may stay open: the seed's longest-lived credential that nobody
# revokes by hand is the 30-day refresh token; an old machine credential gets no longer.
HANDOVER_MAX_SECONDS = 30 * 24 * 3600


def credential_state(machine: Machine, now=None) -> str:
    """``current``, ``handover_open`` (not yet handed out), ``handover_issued`` (sent, not
    confirmed), ``lapsed`` (not confirmed in time: refused until an Admin rotates it) or
    ``oauth`` (a device-flow machine: its tokens rotate on every refresh)."""
    if machine.enrollment != Machine.Enrollment.JOIN_TOKEN:
        return "oauth"
    until = machine.credential_handover_until
    if until is None:
        return "current"
    if until <= (now or timezone.now()):
        return "lapsed"
    return "handover_issued" if machine.pending_credential_hash else "handover_open"


def do_open_credential_handovers(actor: Membership, grace_seconds: int,
                                 ip: str | None = None) -> list[Machine]:
    """Open a handover on every enabled join-token machine of the actor's workspace that has
    none; an open one keeps its deadline (a rerun resumes, it does not extend). Lapsed
    machines are left alone: their credentials are refused until an Admin rotates them."""
    if not can(actor.role, Action.MACHINE_MANAGE):
        raise ApiError(403, "forbidden", "Only Owners and Admins rotate machine credentials.")
    if not 60 <= grace_seconds <= HANDOVER_MAX_SECONDS:
        raise ApiError(400, "bad_request", "The grace period is 60 s..30 days.")
    now = timezone.now()
    until = now + timedelta(seconds=grace_seconds)
    with audit.action():
        machines = list(Machine.objects.in_workspace(actor.workspace).select_for_update()
                        .filter(enrollment=Machine.Enrollment.JOIN_TOKEN,
                                disabled_at__isnull=True).order_by("hostname"))
        for machine in machines:
            if machine.credential_handover_until is not None:
                continue
            machine.credential_handover_until = until
            machine.save(update_fields=["credential_handover_until"])
            audit.record("machine.credential.handover.open", user=actor.user,
                         workspace=actor.workspace, ip=ip, machine=machine.public_id,
                         until=until.isoformat())
    return machines


def do_close_credential_handovers(actor: Membership, ip: str | None = None) -> list[Machine]:
    """End the grace now: a machine that has not confirmed its new credential lapses (both
    credentials refused); the lapsed machines are returned, for the operator to see."""
    if not can(actor.role, Action.MACHINE_MANAGE):
        raise ApiError(403, "forbidden", "Only Owners and Admins rotate machine credentials.")
    now = timezone.now()
    with audit.action():
        open_ = list(Machine.objects.in_workspace(actor.workspace).select_for_update()
                     .filter(credential_handover_until__gt=now).order_by("hostname"))
        for machine in open_:
            machine.credential_handover_until = now
            machine.save(update_fields=["credential_handover_until"])
            audit.record("machine.credential.handover.lapse", user=actor.user,
                         workspace=actor.workspace, ip=ip, machine=machine.public_id)
    return open_


def do_cancel_credential_handovers(actor: Membership, ip: str | None = None) -> list[Machine]:
    """Stop handing out new credentials (a rollback): a machine that has not confirmed keeps
    its old credential, as if nothing had been opened; one that confirmed keeps its new one
    (its old one is gone). Lapsed machines stay lapsed. Returns those it cancelled."""
    if not can(actor.role, Action.MACHINE_MANAGE):
        raise ApiError(403, "forbidden", "Only Owners and Admins rotate machine credentials.")
    with audit.action():
        open_ = list(Machine.objects.in_workspace(actor.workspace).select_for_update()
                     .filter(credential_handover_until__gt=timezone.now()).order_by("hostname"))
        for machine in open_:
            machine.credential_handover_until = machine.pending_credential_hash = None
            machine.save(update_fields=["credential_handover_until", "pending_credential_hash"])
            audit.record("machine.credential.handover.cancel", user=actor.user,
                         workspace=actor.workspace, ip=ip, machine=machine.public_id)
    return open_


def do_issue_handover_credential(machine: Machine, ip: str | None = None) -> str | None:
    """The new credential for this heartbeat's reply while the machine's handover is open
    (a fresh one each time: one that was sent but never used was lost on the way or could
    not be stored), else None."""
    now = timezone.now()
    if machine.credential_handover_until is None or machine.credential_handover_until <= now:
        return None
    credential = tokens.new_machine_credential()
    with audit.action():
        # conditional: a concurrent confirmation or an Admin's rotation closes the handover
        issued = Machine.unscoped.filter(
            pk=machine.pk, credential_hash=machine.credential_hash,
            credential_handover_until__gt=now,
        ).update(pending_credential_hash=credentials.sha256_hex(credential))
        if not issued:
            return None
        audit.record("machine.credential.handover.issue", workspace=machine.workspace_id,
                     method="agent", ip=ip, machine=machine.public_id)
    return credential


def do_confirm_credential_handover(machine: Machine, ip: str | None = None) -> None:
    """The agent used its pending credential: it becomes current, the old one is refused
    from now on (kept as ``previous`` only to recognise a replay)."""
    with audit.action():
        confirmed = Machine.unscoped.filter(
            pk=machine.pk, pending_credential_hash=machine.pending_credential_hash,
            credential_handover_until__gt=timezone.now(),
        ).update(previous_credential_hash=F("credential_hash"),
                 credential_hash=F("pending_credential_hash"), pending_credential_hash=None,
                 credential_handover_until=None, credential_rotated_at=timezone.now())
        if confirmed:
            audit.record("machine.credential.handover", workspace=machine.workspace_id,
                         method="agent", ip=ip, machine=machine.public_id)


def do_set_machine_disabled(actor: Membership, machine_id: str, disabled: bool,
                            ip: str | None = None) -> Machine:
    with audit.action():
        machine = (Machine.objects.in_workspace(actor.workspace).select_for_update()
                   .get(public_id=machine_id))
        machine.disabled_at = timezone.now() if disabled else None
        machine.save(update_fields=["disabled_at"])
        audit.record("machine.disable" if disabled else "machine.enable", user=actor.user,
                     workspace=actor.workspace, ip=ip, machine=machine.public_id)
    return machine


def boot_cursor(machine: Machine, boot_id: str) -> AgentBoot:
    """The (machine, boot) event cursor, locked for this transaction."""
    AgentBoot.objects.get_or_create(machine=machine, boot_id=boot_id[:64])
    return AgentBoot.objects.select_for_update().get(machine=machine, boot_id=boot_id[:64])


