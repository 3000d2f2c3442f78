"""The ONE session authorization function and the seed's operator/observer table.

Every session endpoint (API, agent-facing results, dashboard, Centrifugo tokens) calls
``authorize`` with the permission it needs; it performs the seed's three checks in order:

1. the caller belongs to the workspace that owns the session (otherwise 404: another
   tenant's session is indistinguishable from a missing one);
2. the session's status is CONNECTED or BACKGROUND (otherwise 409 session_not_active);
3. the caller has a role in the session, OPERATOR or OBSERVER, and that role has the
   permission (otherwise 403); a workspace Guest's role is OBSERVER whatever the session says.

A refused attempt is written to the audit log before the error is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from django.db.models import OuterRef, Subquery

from cmdop_server import audit
from cmdop_server.errors import ApiError
from cmdop_server.identity.models import Membership, User
from cmdop_server.permissions import Action, can
from cmdop_server.sessions.models import (
    ACTIVE_STATUSES,
    Participant,
    Session,
    SessionRole,
    Status,
)


class SessionPermission(StrEnum):
    VIEW_OUTPUT = "view_output"
    SEND_INPUT = "send_input"
    EXECUTE_COMMAND = "execute_command"
    FILE_READ = "file_read"
    FILE_WRITE = "file_write"
    RESIZE_TERMINAL = "resize_terminal"
    # Not in the seed's table: changing the session itself (close, attach/detach, invite).
    # Operator only, like every other permission that changes something.
    MANAGE = "manage"


_P = SessionPermission

# The seed's table, exactly (plus MANAGE, marked above).
SESSION_PERMISSIONS: dict[SessionRole, frozenset[SessionPermission]] = {
    SessionRole.OPERATOR: frozenset({_P.VIEW_OUTPUT, _P.SEND_INPUT, _P.EXECUTE_COMMAND,
                                     _P.FILE_READ, _P.FILE_WRITE, _P.RESIZE_TERMINAL,
                                     _P.MANAGE}),
    SessionRole.OBSERVER: frozenset({_P.VIEW_OUTPUT, _P.FILE_READ}),
}


@dataclass(frozen=True)
class SessionAccess:
    session: Session
    role: SessionRole
    membership: Membership


def _refuse(status: int, code: str, detail: str, *, user: User, session: Session | None,
            session_id: str, permission: SessionPermission, reason: str,
            ip: str | None) -> ApiError:
    audit.record("session.access", success=False, user=user,
                 workspace=session.workspace_id if session else None, ip=ip, reason=reason,
                 session=session_id, permission=str(permission))
    return ApiError(status, code, detail)


def authorize(user: User, session_id: str, permission: SessionPermission, *,
              workspace=None, ip: str | None = None,
              membership: Membership | None = None,
              pending_ok: bool = False) -> SessionAccess:
    """The three checks for ``user`` doing ``permission`` on session ``session_id``.

    ``workspace`` is the workspace the request is addressed to (URL slug, or the one an API
    key is bound to); a session of any other workspace fails check 1. ``membership``: the
    caller's membership row this request already read (the API's workspace check), used
    when it is the session's workspace's, instead of reading it again. The caller's session
    role comes with the session in one query: a keystroke pays for each query.
    ``pending_ok``: a session the agent has not opened yet passes check 2 (only the
    terminal's page, whose WebSocket then waits for the agent, asks for that).
    """
    def refuse(status, code, detail, reason, session=None):
        return _refuse(status, code, detail, user=user, session=session, session_id=session_id,
                       permission=permission, reason=reason, ip=ip)

    caller_role = Participant.objects.filter(session_id=OuterRef("pk"), user=user)
    session = (Session.unscoped.select_related("machine", "workspace")
               .annotate(caller_role=Subquery(caller_role.values("role")[:1]))
               .filter(public_id=session_id).first())
    known, membership = membership, None
    if session is not None and (workspace is None
                                or getattr(workspace, "pk", workspace) == session.workspace_id):
        if (known is not None and known.workspace_id == session.workspace_id
                and known.user_id == user.pk):
            membership = known
        else:
            membership = Membership.unscoped.filter(workspace_id=session.workspace_id,
                                                    user=user).first()
    # check 1: the caller belongs to the session's workspace
    if session is None or membership is None:
        raise refuse(404, "not_found", "No such session.", "not_in_workspace", session)
    # check 2: the session is active
    if session.status not in ACTIVE_STATUSES and not (
            pending_ok and session.status == Status.PENDING):
        raise refuse(409, "session_not_active", f"The session is {session.status}.",
                     f"status_{session.status}", session)
    # check 3: the caller has a role in the session, and the role allows this
    role = session.caller_role
    if role not in (SessionRole.OPERATOR, SessionRole.OBSERVER):
        raise refuse(403, "forbidden", "You are not a participant of this session.",
                     "not_participant", session)
    role = SessionRole(role)
    # a Guest is read-only (the model's roles): an operator's seat given while they were a
    # Member is an observer's once the workspace made them a Guest
    if role == SessionRole.OPERATOR and not can(membership.role, Action.SESSION_ACCESS):
        role = SessionRole.OBSERVER
    if permission not in SESSION_PERMISSIONS[role]:
        raise refuse(403, "forbidden", f"An {role} may not {permission}.",
                     f"{role}_lacks_{permission}", session)
    return SessionAccess(session, role, membership)
