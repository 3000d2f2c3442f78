"""The user API for machines and sessions, under /api/v1/workspaces/{slug}/.

Every operation first passes the workspace check (membership + the workspace role table,
``ResourceAuth``); every operation on one session then passes ``authz.authorize`` with the
seed's permission for it. Views stay thin: ``do_*`` actions change state.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from ninja import Query, Router
from pydantic import Field

from cmdop_server import dbconn, output, ratelimit, realtime
from cmdop_server.api.auth import CallerRequest, scoped
from cmdop_server.errors import ApiError
from cmdop_server.machines import actions as machine_actions
from cmdop_server.machines.models import JoinToken, Machine
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action
from cmdop_server.sessions import actions
from cmdop_server.sessions.authz import SessionAccess, SessionPermission, authorize
from cmdop_server.sessions.models import Participant, Session, SessionRole
from cmdop_server.textinput import Input
from cmdop_server.workqueue import BadCursor

router = Router(tags=["machines and sessions"])
P = SessionPermission
MAX_OUTPUT_WAIT = 25


def _access(request: CallerRequest, session_id: str, permission: SessionPermission,
            limit: str | None = "session") -> SessionAccess:
    """``limit``: the scope this call counts against; None for the attached terminal's
    traffic (output reads, keystrokes), which is not a session operation (the seed's 100/min
    counts opens, joins, closes, resizes, commands); keystrokes count bytes instead."""
    caller = request.auth
    if limit:
        ratelimit.enforce(limit, f"user:{caller.user.pk}")
    return authorize(caller.user, session_id, permission, workspace=caller.workspace,
                     ip=client_ip(request), membership=caller.membership)


# ---- schemas -------------------------------------------------------------------------------


class Strict(Input):
    model_config = {"extra": "forbid"}


class JoinTokenIn(Strict):
    name: str = Field(default="", max_length=100)
    ttl_seconds: int = Field(default=3600, ge=60, le=machine_actions.JOIN_TOKEN_MAX_TTL)
    usage_limit: int = Field(default=1, ge=1, le=10_000)


class DisableIn(Strict):
    disabled: bool


class SessionIn(Strict):
    machine_id: str = Field(max_length=40)
    cols: int = Field(default=80, ge=1, le=1000)
    rows: int = Field(default=24, ge=1, le=1000)


class InputIn(Strict):
    data_b64: str = Field(max_length=8192)


class ResizeIn(Strict):
    cols: int = Field(ge=1, le=1000)
    rows: int = Field(ge=1, le=1000)


class CommandIn(Strict):
    command: str = Field(min_length=1, max_length=8192)
    cwd: str = Field(default="/", max_length=4096)
    timeout: int = Field(default=60, ge=1, le=3600)
    stream: bool = False  # output as command.output records while it runs


class FileReadIn(Strict):
    path: str = Field(max_length=4096)
    max_bytes: int = Field(default=1024 * 1024, ge=1, le=1024 * 1024)


class FileWriteIn(Strict):
    path: str = Field(max_length=4096)
    data_b64: str = Field(max_length=720 * 1024)


class ParticipantIn(Strict):
    user_id: int
    role: SessionRole


class AttachIn(Strict):
    attached: bool


class OutputQuery(Input):
    cursor: str | None = None
    wait: float = 0


def machine_out(m: Machine) -> dict:
    return {"machine_id": m.public_id, "hostname": m.hostname, "os": m.os,
            "agent_version": m.agent_version, "online": m.online,
            "last_seen_at": m.last_seen_at, "enrollment": m.enrollment,
            "disabled": m.disabled_at is not None}


def session_out(s: Session, role: str | None = None) -> dict:
    return {"session_id": s.public_id, "machine_id": s.machine.public_id,
            "hostname": s.machine.hostname, "status": s.status, "role": role,
            "created_at": s.created_at, "cols": s.cols, "rows": s.rows,
            "exit_code": s.exit_code}


# ---- machines and join tokens --------------------------------------------------------------


@router.get("/{slug}/machines", auth=scoped(Action.MACHINE_VIEW))
def list_machines(request, slug: str):
    rows = Machine.objects.in_workspace(request.auth.workspace).order_by("hostname")
    return [machine_out(m) for m in rows]


@router.post("/{slug}/join-tokens", auth=scoped(Action.MACHINE_MANAGE), response={201: dict})
def create_join_token(request, slug: str, body: JoinTokenIn):
    jt, raw = machine_actions.do_create_join_token(
        request.auth.membership, body.name, body.ttl_seconds, body.usage_limit,
        client_ip(request))
    return 201, {"id": jt.pk, "join_token": raw, "expires_at": jt.expires_at,
                 "usage_limit": jt.usage_limit}


@router.get("/{slug}/join-tokens", auth=scoped(Action.MACHINE_MANAGE))
def list_join_tokens(request, slug: str):
    rows = JoinToken.objects.in_workspace(request.auth.workspace).order_by("-created_at")
    return [{"id": t.pk, "name": t.name, "expires_at": t.expires_at, "uses": t.uses,
             "usage_limit": t.usage_limit, "revoked": t.revoked_at is not None} for t in rows]


@router.delete("/{slug}/join-tokens/{token_id}", auth=scoped(Action.MACHINE_MANAGE),
               response={204: None})
def revoke_join_token(request, slug: str, token_id: int):
    machine_actions.do_revoke_join_token(request.auth.membership, token_id, client_ip(request))
    return 204, None


@router.post("/{slug}/machines/{machine_id}/credential", auth=scoped(Action.MACHINE_MANAGE))
def rotate_credential(request, slug: str, machine_id: str):
    machine, credential = machine_actions.do_rotate_machine_credential(
        request.auth.membership, machine_id, client_ip(request))
    return {"machine_id": machine.public_id, "credential": credential}


@router.post("/{slug}/machines/{machine_id}/disable", auth=scoped(Action.MACHINE_MANAGE))
def disable_machine(request, slug: str, machine_id: str, body: DisableIn):
    machine = machine_actions.do_set_machine_disabled(request.auth.membership, machine_id,
                                                      body.disabled, client_ip(request))
    return machine_out(machine)


# ---- sessions ------------------------------------------------------------------------------


@router.get("/{slug}/sessions", auth=scoped(Action.SESSION_VIEW))
def list_sessions(request, slug: str):
    """The caller's own sessions (those they have a role in), newest first."""
    mine = (Participant.objects.filter(user=request.auth.user,
                                       session__workspace=request.auth.workspace)
            .select_related("session", "session__machine").order_by("-session__created_at"))
    return [session_out(p.session, p.role) for p in mine[:200]]


@router.post("/{slug}/sessions", auth=scoped(Action.SESSION_ACCESS), response={201: dict})
def create_session(request, slug: str, body: SessionIn):
    ratelimit.enforce("session", f"user:{request.auth.user.pk}")
    session = actions.do_create_session(request.auth.membership, body.machine_id, body.cols,
                                        body.rows, client_ip(request))
    return 201, session_out(session, SessionRole.OPERATOR)


@router.get("/{slug}/sessions/{session_id}", auth=scoped(Action.SESSION_VIEW))
def get_session(request, slug: str, session_id: str):
    access = _access(request, session_id, P.VIEW_OUTPUT)
    return session_out(access.session, access.role)


@router.get("/{slug}/sessions/{session_id}/output", auth=scoped(Action.SESSION_VIEW))
async def read_output(request, slug: str, session_id: str, query: Query[OutputQuery]):
    """Output after ``cursor`` (omit: from the oldest held); waits up to ``wait`` seconds
    (max 25) when there is none yet. A ``dropped`` item marks output trimmed away."""
    access = await sync_to_async(_access)(request, session_id, P.VIEW_OUTPUT, None)
    # this request's thread (auth, the check above) must not hold a DB connection while
    # the read waits: under ASGI every request has a thread of its own
    await sync_to_async(dbconn.release_thread_connections)()
    wait = max(0.0, min(float(query.wait), MAX_OUTPUT_WAIT))
    try:
        page = await output.read(access.session.pk, query.cursor, wait)
    except BadCursor as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    return {"items": page.items, "cursor": page.cursor}


@router.post("/{slug}/sessions/{session_id}/input", auth=scoped(Action.SESSION_VIEW),
             response={202: dict})
def send_input(request, slug: str, session_id: str, body: InputIn):
    access = _access(request, session_id, P.SEND_INPUT, None)
    ratelimit.enforce_amount("input_bytes", f"user:{request.auth.user.pk}",
                             len(body.data_b64) * 3 // 4)
    return 202, {"work_id": actions.send_input(access, body.data_b64)}


@router.post("/{slug}/sessions/{session_id}/resize", auth=scoped(Action.SESSION_VIEW),
             response={202: dict})
def resize(request, slug: str, session_id: str, body: ResizeIn):
    access = _access(request, session_id, P.RESIZE_TERMINAL)
    return 202, {"work_id": actions.resize(access, body.cols, body.rows)}


@router.post("/{slug}/sessions/{session_id}/commands", auth=scoped(Action.SESSION_VIEW),
             response={202: dict})
def run_command(request, slug: str, session_id: str, body: CommandIn):
    access = _access(request, session_id, P.EXECUTE_COMMAND)
    work_id = actions.do_request_command(access, body.command, body.cwd, body.timeout,
                                         client_ip(request), body.stream)
    return 202, {"work_id": work_id}


@router.post("/{slug}/sessions/{session_id}/files/read", auth=scoped(Action.SESSION_VIEW),
             response={202: dict})
def read_file(request, slug: str, session_id: str, body: FileReadIn):
    access = _access(request, session_id, P.FILE_READ, limit="file")
    work_id = actions.do_request_file_read(access, body.path, body.max_bytes,
                                           client_ip(request))
    return 202, {"work_id": work_id}


@router.post("/{slug}/sessions/{session_id}/files/write", auth=scoped(Action.SESSION_VIEW),
             response={202: dict})
def write_file(request, slug: str, session_id: str, body: FileWriteIn):
    access = _access(request, session_id, P.FILE_WRITE, limit="file")
    work_id = actions.do_request_file_write(access, body.path, body.data_b64,
                                            client_ip(request))
    return 202, {"work_id": work_id}


@router.post("/{slug}/sessions/{session_id}/participants", auth=scoped(Action.SESSION_VIEW))
def add_participant(request, slug: str, session_id: str, body: ParticipantIn):
    access = _access(request, session_id, P.MANAGE)
    p = actions.do_add_participant(access, body.user_id, body.role, client_ip(request))
    return {"user_id": p.user_id, "role": p.role}


@router.post("/{slug}/sessions/{session_id}/attachment", auth=scoped(Action.SESSION_VIEW))
def set_attachment(request, slug: str, session_id: str, body: AttachIn):
    access = _access(request, session_id, P.MANAGE)
    session = actions.do_set_attached(access, body.attached, client_ip(request))
    return session_out(session, access.role)


@router.post("/{slug}/sessions/{session_id}/close", auth=scoped(Action.SESSION_VIEW))
def close_session(request, slug: str, session_id: str):
    access = _access(request, session_id, P.MANAGE)
    session = actions.do_close_session(access, client_ip(request))
    return session_out(session, access.role)


@router.get("/{slug}/sessions/{session_id}/realtime", auth=scoped(Action.SESSION_VIEW))
def realtime_tokens(request, slug: str, session_id: str):
    """Centrifugo tokens for this session's channel (participants only); ``enabled`` false
    when the site runs without Centrifugo (use the output cursor API)."""
    access = _access(request, session_id, P.VIEW_OUTPUT)
    user_id = request.auth.user.pk
    if not realtime.enabled():
        return {"enabled": False}
    return {"enabled": True, "channel": realtime.session_channel(access.session.public_id),
            "ws_url": realtime.websocket_url(),
            "connection_token": realtime.connection_token(user_id),
            "subscription_token": realtime.subscription_token(user_id,
                                                              access.session.public_id)}
