"""Authentication and the workspace check for every API operation, before its body is read.

``UserAuth`` accepts an access token or API key. ``WorkspaceAuth(action)`` also resolves
the ``{slug}`` in the URL to the caller's membership (404 if the caller is not a member, so
other tenants' workspaces are indistinguishable from missing ones) and applies the
permission table (403). Handlers read ``request.auth`` (a ``Caller``) and query through
``Model.objects.in_workspace(request.auth.workspace)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from ninja.security import HttpBearer

from cmdop_server import audit, ratelimit
from cmdop_server.errors import ApiError
from cmdop_server.identity.authn import Principal, authenticate_bearer
from cmdop_server.identity.models import Membership, Workspace
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action, Role, can


@dataclass(frozen=True)
class Caller:
    principal: Principal
    membership: Membership | None = None

    @property
    def user(self):
        return self.principal.user

    @property
    def workspace(self) -> Workspace | None:
        return self.membership.workspace if self.membership else None


class CallerRequest(HttpRequest):
    """The request a handler behind these auths gets: ninja has set ``auth`` to the Caller."""

    auth: Caller


class UserAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        principal, reason = authenticate_bearer(token, "api")
        if principal is None:
            refuse_bearer(client_ip(request), reason)
            return None
        return Caller(principal)


def refuse_bearer(ip: str, reason: str) -> None:
    """A bearer credential was refused (the user API, or the terminal's WebSocket): it counts
    against the client's auth rate limit (RateLimitedError once spent), which also bounds how
    many failure rows one client can write to the audit log; then the audit row."""
    ratelimit.refuse_if_exhausted("auth", f"ip:{ip}")
    ratelimit.enforce("auth", f"ip:{ip}")
    audit.record("auth.bearer", success=False, method="bearer", ip=ip, reason=reason)


class WorkspaceAuth(UserAuth):
    def __init__(self, action: Action) -> None:
        super().__init__()
        self.action = action

    def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        caller = super().authenticate(request, token)
        if caller is None:
            return None
        slug = request.resolver_match.kwargs.get("slug") if request.resolver_match else None
        bound = caller.principal.workspace
        if slug is None or (bound is not None and bound.slug != slug):
            raise ApiError(404, "not_found", "No such workspace.")
        membership = _membership(slug, caller.user.pk)
        if membership is None:
            raise ApiError(404, "not_found", "No such workspace.")
        refuse_disabled_guest(membership)
        if not can(membership.role, self.action):
            raise ApiError(403, "forbidden", f"Your role may not {self.action}.")
        return Caller(caller.principal, membership)


def refuse_disabled_guest(membership: Membership) -> None:
    """A guest's membership counts only while its workspace has guests enabled: the user API,
    the dashboard's pages and the terminal's socket (cookie or bearer) all refuse it alike."""
    if membership.role == Role.GUEST and not membership.workspace.guests_enabled:
        raise ApiError(403, "forbidden", "Guest access is disabled in this workspace.")


def _membership(slug: str, user_id: int) -> Membership | None:
    """The root of tenant scoping: the caller's own membership row, found by slug."""
    return (Membership.unscoped.select_related("workspace", "user")
            .filter(workspace__slug=slug, user_id=user_id).first())


def workspace(action: Action) -> WorkspaceAuth:
    return WorkspaceAuth(action)


class ResourceAuth(UserAuth):
    """WorkspaceAuth's check (membership by slug, then the workspace role table) for
    operations on one machine or session (or the workspace's audit log), whose own check
    follows in the view. Kept apart from WorkspaceAuth so tests/server's matrix (workspace
    role only) does not claim these; tests/server_sessions/test_session_matrix.py walks
    them instead."""

    permission_rule = "workspace role table, then the resource's own check (sessions.authz)"

    def __init__(self, action: Action) -> None:
        super().__init__()
        self.action = action
        self._workspace_auth = WorkspaceAuth(action)

    def authenticate(self, request: HttpRequest, token: str) -> Caller | None:
        return self._workspace_auth.authenticate(request, token)


def scoped(action: Action) -> ResourceAuth:
    return ResourceAuth(action)


user = UserAuth()
