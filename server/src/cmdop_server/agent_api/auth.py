"""Who an agent request comes from: a machine credential (``mc_``) or the OAuth access
token of the device-flow grant that enrolled the machine. Failures are audited and count
against the client's auth rate limit, like every other bearer failure."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer

from cmdop_server import audit, credentials, dbconn, ratelimit
from cmdop_server.errors import ApiError
from cmdop_server.identity.authn import Principal, authenticate_bearer
from cmdop_server.machines.actions import do_confirm_credential_handover
from cmdop_server.machines.models import Machine
from cmdop_server.machines.tokens import MACHINE_CREDENTIAL_PREFIX
from cmdop_server.netinfo import client_ip


@dataclass(frozen=True)
class AgentCaller:
    machine: Machine
    principal: Principal | None = None


def _same(stored: str | None, raw: str) -> bool:
    return stored is not None and credentials.same_digest(stored, raw)


def _credential_holder(raw: str, ip: str) -> tuple[Machine | None, str]:
    """The machine a machine credential belongs to, and why it is refused ('' if it is not).
    Presenting the pending credential of a handover confirms it (the old one is refused from
    then on); a superseded or lapsed credential is refused naming its machine, so a replay of
    an old credential is audited as one."""
    digest = credentials.sha256_hex(raw)
    machine = (Machine.unscoped.select_related("workspace")
               .filter(Q(credential_hash=digest) | Q(pending_credential_hash=digest)
                       | Q(previous_credential_hash=digest)).first())
    if machine is None:
        return None, "unknown_machine_credential"
    until = machine.credential_handover_until
    lapsed = until is not None and until <= timezone.now()
    if _same(machine.pending_credential_hash, raw):
        if lapsed:
            return machine, "machine_credential_handover_lapsed"
        do_confirm_credential_handover(machine, ip)
        machine.refresh_from_db()
    if _same(machine.credential_hash, raw):
        return machine, "machine_credential_handover_lapsed" if lapsed else ""
    if _same(machine.previous_credential_hash, raw):
        return machine, "superseded_machine_credential"
    return None, "unknown_machine_credential"


def machine_for(raw: str, ip: str) -> tuple[Machine | None, str]:
    """(the caller's machine, ''), or (the machine if known, why the credential is refused)."""
    if raw.startswith(MACHINE_CREDENTIAL_PREFIX):
        return _credential_holder(raw, ip)
    principal, reason = authenticate_bearer(raw, "agent")
    if principal is None:
        return None, reason
    if principal.family_id is None:
        return None, "not_an_agent_token"
    machine = (Machine.unscoped.select_related("workspace")
               .filter(token_family_id=principal.family_id).first())
    return (machine, "") if machine is not None else (None, "no_machine_for_token")


def _machine_caller(request: HttpRequest, token: str) -> AgentCaller | None:
    ip = client_ip(request)
    machine, reason = machine_for(token, ip)
    if machine is None or reason:
        ratelimit.enforce("auth", f"ip:{ip}")
        known = {} if machine is None else {"workspace": machine.workspace_id,
                                            "machine": machine.public_id}
        audit.record("auth.machine", success=False, method="bearer", ip=ip, reason=reason,
                     **known)
        return None
    if machine.disabled_at is not None:
        raise ApiError(403, "forbidden", "This machine is disabled.")
    return AgentCaller(machine)


class MachineAuth(HttpBearer):
    permission_rule = "the caller's own machine (machine credential or its agent token)"

    def authenticate(self, request: HttpRequest, token: str) -> AgentCaller | None:
        return _machine_caller(request, token)


def _current_holder(raw: str) -> AgentCaller | None:
    """The long-poll's common case, decided with one indexed query and no ORM: ``raw`` is
    the current credential of a machine that may call now (not disabled, no handover
    lapsed), the caller then that machine (only its id read; any other field loads when
    used). None for every other case, which ``_machine_caller`` decides as for any call.
    Each poll checks its credential again (a revoked or superseded one is refused at the
    next poll), and the ORM's query for it cost a worker about 1 ms of CPU, a third of a
    poll; this costs a twentieth of that."""
    if not raw.startswith(MACHINE_CREDENTIAL_PREFIX):
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {Machine._meta.db_table} WHERE credential_hash = %s "  # noqa: S608 - our table's name
            "AND disabled_at IS NULL "
            "AND (credential_handover_until IS NULL OR credential_handover_until > %s)",
            [credentials.sha256_hex(raw), timezone.now()])
        row = cursor.fetchone()
    if row is None:
        return None
    return AgentCaller(Machine.from_db(connection.alias, ["id"], [row[0]]))


def _pooled_caller(request: HttpRequest, token: str) -> AgentCaller | None:
    return _current_holder(token) or _machine_caller(request, token)


class PooledMachineAuth(HttpBearer):
    """MachineAuth for the async long-poll. Under ASGI, Django runs a request's sync code in
    a thread of its own, and that thread's DB connection would stay open for the whole
    wait: 2,000 waiting agents = 2,000 Postgres connections. This runs the lookup on the
    worker's few database threads instead (``dbconn.pool()``), whose persistent
    connections are reused by every poll (and recycled like any request's:
    close_old_connections)."""

    permission_rule = MachineAuth.permission_rule

    async def authenticate(self, request: HttpRequest, token: str) -> AgentCaller | None:
        return await dbconn.in_pool(_pooled_caller)(request, token)


machine = MachineAuth()
machine_pooled = PooledMachineAuth()


class EnrollAuth:
    """Enrollment proves itself in the body (join token) or with an agent-scope access
    token; the view decides which. This only hands the view the presented bearer."""

    permission_rule = "a join token in the body, or an access token with the agent scope"
    openapi_type = "http"
    openapi_scheme = "bearer"

    def __call__(self, request: HttpRequest) -> EnrollCredential:
        scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
        return EnrollCredential(raw.strip() if scheme.lower() == "bearer" else "")


@dataclass(frozen=True)
class EnrollCredential:
    bearer: str


class AgentRequest(HttpRequest):
    """What a handler behind ``machine`` or ``machine_pooled`` gets: ``auth`` is their result."""

    auth: AgentCaller


class EnrollRequest(HttpRequest):
    auth: EnrollCredential


enroll = EnrollAuth()
