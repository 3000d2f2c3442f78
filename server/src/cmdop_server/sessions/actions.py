"""Session state changes (one ``do_*`` each: one transaction, audit rows, events after commit)
and the work they send to agents. Callers have passed ``authz.authorize`` already, except
``do_create_session`` (a workspace permission) and the agent-side functions (the machine)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import TypedDict

from django.db import transaction
from django.utils import timezone

from cmdop_server import audit, output, realtime, workqueue
from cmdop_server.errors import ApiError
from cmdop_server.identity.models import Membership
from cmdop_server.machines.actions import boot_cursor, check_agent_version
from cmdop_server.machines.models import Machine
from cmdop_server.machines.tokens import new_public_id
from cmdop_server.permissions import Action, can
from cmdop_server.sessions.authz import SessionAccess
from cmdop_server.sessions.models import (
    OPEN_STATUSES,
    Participant,
    Session,
    SessionRole,
    Status,
)

MAX_INPUT_BYTES = 4096
MAX_COMMAND_BYTES = 8192
MAX_PATH_BYTES = 4096
MAX_FILE_READ = 1024 * 1024
MAX_FILE_WRITE = 512 * 1024  # base64 of it stays under the 1 MiB body cap


def _enqueue_on_commit(machine: Machine, work_type: str, payload: dict, session_id: str,
                       work_id: str) -> None:
    transaction.on_commit(lambda: workqueue.enqueue(machine.pk, work_type, payload, session_id,
                                                    work_id))


def _publish_status(session: Session) -> None:
    realtime.publish_on_commit(realtime.session_channel(session.public_id),
                               {"type": "status", "status": session.status})


def _set_status(session: Session, status: Status, effects: _Effects | None = None,
                **fields) -> None:
    """The new status, and its record in the session's output: after commit, or with the
    batch of agent events (``effects``) that caused it."""
    session.status, session.updated_at = status, timezone.now()
    for name, value in fields.items():
        setattr(session, name, value)
    session.save(update_fields=["status", "updated_at", *fields])
    record = {"status": str(status), **{k: v for k, v in fields.items() if k == "exit_code"}}
    if effects is not None:
        effects.add(session, "status", record)
    else:
        transaction.on_commit(lambda: output.append_record(session.pk, "status", record))
    _publish_status(session)


# ---- sessions (people) ---------------------------------------------------------------------


def do_create_session(actor: Membership, machine_id: str, cols: int, rows: int,
                      ip: str | None = None) -> Session:
    if not can(actor.role, Action.SESSION_ACCESS):
        raise ApiError(403, "forbidden", f"A {actor.role} may not open sessions.")
    machine = (Machine.objects.in_workspace(actor.workspace)
               .filter(public_id=machine_id).first())
    if machine is None:
        raise ApiError(404, "not_found", "No such machine.")
    if machine.disabled_at is not None:
        raise ApiError(409, "machine_disabled", "The machine is disabled.")
    work_id = workqueue.new_work_id()
    with audit.action():
        session = Session(workspace=actor.workspace, machine=machine, created_by=actor.user,
                          public_id=new_public_id("s_"), cols=cols, rows=rows,
                          boot_id=machine.boot_id)
        session.save()
        Participant(session=session, user=actor.user, role=SessionRole.OPERATOR).save()
        audit.record("session.create", user=actor.user, workspace=actor.workspace, ip=ip,
                     session=session.public_id, machine=machine.public_id,
                     hostname=machine.hostname, work_id=work_id)
        _enqueue_on_commit(machine, "session.open", {"cols": cols, "rows": rows},
                           session.public_id, work_id)
    return session


def do_add_participant(access: SessionAccess, user_id: int, role: SessionRole,
                       ip: str | None = None) -> Participant:
    session = access.session
    target = Membership.unscoped.filter(workspace_id=session.workspace_id,
                                        user_id=user_id).first()
    if target is None:
        raise ApiError(404, "not_found", "No such member.")
    if role == SessionRole.OPERATOR and not can(target.role, Action.SESSION_ACCESS):
        raise ApiError(403, "forbidden", f"A {target.role} can only observe.")
    with audit.action():
        participant, _ = Participant.objects.update_or_create(
            session=session, user_id=user_id, defaults={"role": role})
        audit.record("session.participant", user=access.membership.user,
                     workspace=session.workspace_id, ip=ip, session=session.public_id,
                     participant_id=user_id, role=str(role))
    return participant


def do_set_attached(access: SessionAccess, attached: bool, ip: str | None = None) -> Session:
    with audit.action():
        session = Session.unscoped.select_for_update().get(pk=access.session.pk)
        wanted = Status.CONNECTED if attached else Status.BACKGROUND
        if session.status in (Status.CONNECTED, Status.BACKGROUND) and session.status != wanted:
            _set_status(session, wanted)
        audit.record("session.attach" if attached else "session.background",
                     user=access.membership.user, workspace=session.workspace_id, ip=ip,
                     session=session.public_id)
    return session


def do_close_session(access: SessionAccess, ip: str | None = None) -> Session:
    work_id = workqueue.new_work_id()
    with audit.action():
        session = Session.unscoped.select_for_update().get(pk=access.session.pk)
        _set_status(session, Status.CLOSED)
        audit.record("session.close", user=access.membership.user,
                     workspace=session.workspace_id, ip=ip, session=session.public_id,
                     work_id=work_id)
        _enqueue_on_commit(session.machine, "session.close", {}, session.public_id, work_id)
    return session


# ---- work for the session's machine --------------------------------------------------------


def _b64(value: str, limit: int, name: str) -> bytes:
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", f"{name} is not base64.") from None
    if len(data) > limit:
        raise ApiError(400, "bad_request", f"{name} is over {limit} bytes.")
    return data


def send_input(access: SessionAccess, data_b64: str) -> str:
    """Keystrokes are not audited one by one (commands and file access are)."""
    _b64(data_b64, MAX_INPUT_BYTES, "data_b64")
    return workqueue.enqueue(access.session.machine_id, "session.input",
                             {"data_b64": data_b64}, access.session.public_id)


def resize(access: SessionAccess, cols: int, rows: int) -> str:
    return workqueue.enqueue(access.session.machine_id, "session.resize",
                             {"cols": cols, "rows": rows}, access.session.public_id)


def _audited_work(access: SessionAccess, event: str, work_type: str, payload: dict,
                  ip: str | None, **facts) -> str:
    """Privileged work: the request is recorded before the agent can see it, so if the
    audit store is down the work is refused rather than done unrecorded."""
    session, work_id = access.session, workqueue.new_work_id()
    with audit.action():
        audit.record(event, user=access.membership.user, workspace=session.workspace_id,
                     ip=ip, session=session.public_id, machine=session.machine.public_id,
                     work_id=work_id, **facts)
        _enqueue_on_commit(session.machine, work_type, payload, session.public_id, work_id)
    return work_id


def do_request_command(access: SessionAccess, command: str, cwd: str, timeout: int,
                       ip: str | None = None, stream: bool = False) -> str:
    """``stream``: the agent sends the output as it comes (command.output records), the
    result then carries none."""
    if not command or "\x00" in command or len(command.encode()) > MAX_COMMAND_BYTES:
        raise ApiError(400, "bad_request", "command is empty, has NUL or is over 8 KiB.")
    _check_path(cwd, "cwd")
    payload: dict[str, object] = {"command": command, "cwd": cwd, "timeout": timeout}
    if stream:
        payload["stream"] = True
    return _audited_work(access, "command.request", "command.run", payload, ip,
                         command=command, cwd=cwd)


def _check_path(path: str, name: str = "path") -> None:
    if (not path.startswith("/") or "\x00" in path or len(path.encode()) > MAX_PATH_BYTES):
        raise ApiError(400, "bad_request", f"{name} must be absolute, without NUL, <= 4 KiB.")


def do_request_file_read(access: SessionAccess, path: str, max_bytes: int,
                         ip: str | None = None) -> str:
    _check_path(path)
    max_bytes = max(1, min(max_bytes, MAX_FILE_READ))
    return _audited_work(access, "file.request", "file.read",
                         {"path": path, "max_bytes": max_bytes}, ip, path=path,
                         operation="read")


def do_request_file_write(access: SessionAccess, path: str, data_b64: str,
                          ip: str | None = None) -> str:
    _check_path(path)
    size = len(_b64(data_b64, MAX_FILE_WRITE, "data_b64"))
    return _audited_work(access, "file.request", "file.write",
                         {"path": path, "data_b64": data_b64}, ip, path=path,
                         operation="write", bytes=size)


# ---- the agent's side ----------------------------------------------------------------------


def do_heartbeat(machine: Machine, hostname: str, os_name: str, version: str,
                 boot_id: str, ip: str | None = None) -> Machine:
    """Liveness and facts. Not audited (it is telemetry, every 30 s), except a new boot,
    which ends the previous boot's sessions and is a state change. (Here, not in
    machines.actions, because it ends sessions: machines sit a floor below sessions.)"""
    check_agent_version(version)
    now = timezone.now()
    if machine.boot_id == boot_id:
        Machine.unscoped.filter(pk=machine.pk).update(
            last_seen_at=now, os=os_name[:200], agent_version=version[:40])
        machine.last_seen_at = now
        return machine
    with audit.action():
        locked = Machine.unscoped.select_for_update().get(pk=machine.pk)
        previous = locked.boot_id
        locked.last_seen_at, locked.os, locked.agent_version = now, os_name[:200], version[:40]
        locked.boot_id = boot_id[:64]
        locked.save(update_fields=["last_seen_at", "os", "agent_version", "boot_id"])
        ended = disconnect_stale_sessions(locked, boot_id)
        audit.record("machine.boot", workspace=locked.workspace_id, method="agent", ip=ip,
                     machine=locked.public_id, hostname=hostname[:253], boot_id=boot_id[:64],
                     previous_boot_id=previous, sessions_disconnected=ended)
    return locked


def disconnect_stale_sessions(machine: Machine, boot_id: str) -> int:
    """Inside the caller's transaction: open sessions of an older boot are gone."""
    stale = list(Session.unscoped.select_for_update()
                 .filter(machine=machine, status__in=OPEN_STATUSES).exclude(boot_id=boot_id))
    for session in stale:
        _set_status(session, Status.DISCONNECTED)
    return len(stale)


@dataclass
class _Effects:
    """What one batch of agent events writes outside the database: records and output for
    the sessions' output buffers (Redis), each tagged with the event it comes from."""

    boot_id: str
    appends: list[tuple[Session, str, bytes | dict, int]] = field(default_factory=list)
    seq: int = 0  # the event being applied

    def add(self, session: Session, kind: str, value: bytes | dict) -> None:
        self.appends.append((session, kind, value, self.seq))

    def append_to_buffers(self) -> None:
        """Called inside the batch's transaction, before it commits: if Redis is down the
        whole batch rolls back and the agent sends it again later. (Appended after the
        commit, a Redis failure would lose output of a batch the database had already
        accepted: the agent's resend is a duplicate by seq and ignored.) A batch sent again
        after a failed commit is not appended twice: each append carries (boot, seq)."""
        for session, kind, value, seq in self.appends:
            once = (self.boot_id, seq)
            if isinstance(value, bytes):  # kind "output": terminal bytes
                output.append_output(session.pk, value, once=once)
            else:
                output.append_record(session.pk, kind, value, once=once)

    def publish_live(self) -> None:
        """After commit: one Centrifugo publish per session per batch, not one per event."""
        live: dict[str, bytearray] = {}
        for session, _, value, _ in self.appends:
            if isinstance(value, bytes):
                live.setdefault(session.public_id, bytearray()).extend(value)
        for public_id, data in live.items():
            realtime.publish(realtime.session_channel(public_id),
                             {"type": "output", "data_b64": base64.b64encode(data).decode()})


def do_apply_agent_events(machine: Machine, boot_id: str, events: list[dict],
                          ip: str | None = None) -> int:
    """Store one batch of agent events; events at or below the boot's cursor are ignored
    (a retried batch), a batch that starts after a gap is refused. Returns accepted_through.

    A batch naming a session this machine does not hold is refused whole (403): a machine
    credential speaks for its own sessions only, so one stolen from a host cannot write
    output, results or audit rows into another machine's sessions. The refusal is audited;
    a session never changes machine, so checking before the transaction is race-free."""
    foreign = _foreign_sessions(machine, events)
    if foreign:
        audit.record("agent.events", success=False, workspace=machine.workspace_id,
                     method="agent", ip=ip, reason="foreign_session",
                     machine=machine.public_id, sessions=foreign[:10])
        raise ApiError(403, "forbidden", f"Session {foreign[0]} is not this machine's.")
    effects = _Effects(boot_id)
    with audit.action():
        cursor = boot_cursor(machine, boot_id)
        fresh = [e for e in events if e["seq"] > cursor.accepted_through]
        expected = cursor.accepted_through + 1
        for event in fresh:
            if event["seq"] != expected:
                raise ApiError(400, "bad_request", f"gap: expected seq {expected}.")
            expected += 1
        sessions = _sessions_of(machine, fresh)
        for event in fresh:
            effects.seq = event["seq"]
            _apply(machine, sessions.get(event.get("session_id") or ""), event, effects, ip)
        if fresh:
            cursor.accepted_through = fresh[-1]["seq"]
            cursor.save(update_fields=["accepted_through"])
        effects.append_to_buffers()
        transaction.on_commit(effects.publish_live)
    return cursor.accepted_through


def _foreign_sessions(machine: Machine, events: list[dict]) -> list[str]:
    named = {str(e["session_id"]) for e in events if e.get("session_id")}
    if not named:
        return []
    held = set(Session.unscoped.filter(machine=machine, public_id__in=named)
               .values_list("public_id", flat=True))
    return sorted(named - held)


def _sessions_of(machine: Machine, events: list[dict]) -> dict[str, Session]:
    ids = {e.get("session_id") for e in events if e.get("session_id")}
    if not ids:
        return {}
    rows = Session.unscoped.select_for_update().filter(machine=machine, public_id__in=ids)
    return {s.public_id: s for s in rows}


_RESULT_FIELDS = {
    "command.result": ("work_id", "command", "exit_code", "duration_ms", "stdout_b64",
                       "stderr_b64", "truncated", "timed_out"),
    "file.result": ("work_id", "path", "operation", "bytes", "data_b64", "truncated"),
    "work.error": ("work_id", "error", "detail"),
    "agent.dropped": ("work_id", "dropped_type", "detail"),
}


class _EventFacts(TypedDict):
    """What the audit row of every agent event names."""

    machine: str
    session: str | None
    work_id: str


def _apply(machine: Machine, session: Session | None, event: dict, effects: _Effects,
           ip: str | None) -> None:
    kind = event["type"]
    ws = machine.workspace_id
    facts: _EventFacts = {
        "machine": machine.public_id, "session": session.public_id if session else None,
        "work_id": str(event.get("work_id", ""))[:40],
    }
    if kind == "session.output" and session is not None:
        data = base64.b64decode(str(event.get("data_b64", "")), validate=False)
        effects.add(session, "output", data)
    elif kind == "session.opened" and session is not None:
        if session.status == Status.PENDING:
            _set_status(session, Status.CONNECTED, effects, pid=_int(event.get("pid")))
        audit.record("session.opened", workspace=ws, method="agent", ip=ip, **facts)
    elif kind == "session.exited" and session is not None:
        if session.status in OPEN_STATUSES:
            _set_status(session, Status.CLOSED, effects,
                        exit_code=_int(event.get("exit_code")))
        audit.record("session.exited", workspace=ws, method="agent", ip=ip,
                     exit_code=event.get("exit_code"), signal=event.get("signal"), **facts)
    elif kind == "command.output" and session is not None:
        # a running command's output as it comes: audited once, with the command's result
        effects.add(session, kind, {k: event.get(k) for k in ("work_id", "stream", "data_b64")})
    elif kind in _RESULT_FIELDS:
        record = {k: event.get(k) for k in _RESULT_FIELDS[kind] if k in event}
        if kind == "command.result":
            audit.record("command.executed", workspace=ws, method="agent", ip=ip,
                         command=str(event.get("command", ""))[:8192],
                         exit_code=event.get("exit_code"),
                         duration_ms=event.get("duration_ms"),
                         timed_out=bool(event.get("timed_out")), **facts)
        elif kind == "file.result":
            audit.record("file.access", workspace=ws, method="agent", ip=ip,
                         path=str(event.get("path", ""))[:4096],
                         operation=event.get("operation"), bytes=event.get("bytes"), **facts)
        elif kind == "work.error":
            audit.record("work.error", workspace=ws, success=False, method="agent", ip=ip,
                         reason=str(event.get("error", ""))[:200], **facts)
        else:  # an event this control plane refused once; the agent sent this in its place
            audit.record("agent.dropped", workspace=ws, success=False, method="agent", ip=ip,
                         reason=str(event.get("dropped_type", ""))[:200],
                         detail=str(event.get("detail", ""))[:500], **facts)
        if session is not None:
            effects.add(session, kind, record)


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None



def do_disconnect_silent_machines() -> int:
    """Sessions of machines that stopped heart-beating become disconnected (the protocol:
    three missed intervals). Run periodically (``sessions_sweep``); returns how many."""
    ended = 0
    open_machines = (Machine.unscoped.filter(sessions__status__in=OPEN_STATUSES)
                     .distinct().only("pk", "workspace_id", "public_id", "last_seen_at",
                                      "heartbeat_interval", "disabled_at"))
    for machine in open_machines:
        if machine.online:
            continue
        with audit.action():
            stale = list(Session.unscoped.select_for_update()
                         .filter(machine=machine, status__in=OPEN_STATUSES))
            for session in stale:
                _set_status(session, Status.DISCONNECTED)
            audit.record("machine.silent", workspace=machine.workspace_id, method="sweep",
                         machine=machine.public_id, sessions_disconnected=len(stale))
        ended += len(stale)
    return ended
