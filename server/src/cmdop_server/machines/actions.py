"""Every state change of machines: one ``do_*`` each, one transaction, audit rows committed
with it (STYLE rule 8). A refused attempt is audited after its transaction rolled back."""

from __future__ import annotations

import re
from datetime import timedelta

from django.db import IntegrityError
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
    """A new credential; the old one stops working at once (hand the new one to the agent)."""
    credential = tokens.new_machine_credential()
    with audit.action():
        machine = (Machine.objects.in_workspace(actor.workspace).select_for_update()
                   .get(public_id=machine_id, enrollment=Machine.Enrollment.JOIN_TOKEN))
        machine.credential_hash = credentials.sha256_hex(credential)
        machine.credential_rotated_at = timezone.now()
        machine.save(update_fields=["credential_hash", "credential_rotated_at"])
        audit.record("machine.credential.rotate", user=actor.user, workspace=actor.workspace,
                     ip=ip, machine=machine.public_id)
    return machine, credential


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


