"""The one permission table: which workspace role may do which action.

Every workspace endpoint names exactly one ``Action`` (``api.auth.WorkspaceAuth``), and the
permission-matrix test walks the URL conf to prove it. Roles come from the security model:
Owner (full control, billing, member management), Admin (machine management, invites),
Member (access to sessions), Guest (read-only, enabled per workspace).
"""

from __future__ import annotations

from enum import StrEnum

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    GUEST = "guest", "Guest"


class Action(StrEnum):
    WORKSPACE_VIEW = "workspace.view"
    WORKSPACE_UPDATE = "workspace.update"
    BILLING_MANAGE = "billing.manage"
    MEMBER_LIST = "member.list"
    MEMBER_INVITE = "member.invite"
    MEMBER_MANAGE = "member.manage"
    MACHINE_VIEW = "machine.view"
    MACHINE_MANAGE = "machine.manage"
    SESSION_VIEW = "session.view"
    SESSION_ACCESS = "session.access"
    API_KEY_USE = "api_key.use"
    API_KEY_MANAGE_ALL = "api_key.manage_all"
    AUDIT_VIEW = "audit.view"


_O, _A, _M, _G = Role.OWNER, Role.ADMIN, Role.MEMBER, Role.GUEST

PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.WORKSPACE_VIEW: frozenset({_O, _A, _M, _G}),
    Action.WORKSPACE_UPDATE: frozenset({_O}),
    Action.BILLING_MANAGE: frozenset({_O}),
    Action.MEMBER_LIST: frozenset({_O, _A, _M, _G}),
    Action.MEMBER_INVITE: frozenset({_O, _A}),
    Action.MEMBER_MANAGE: frozenset({_O}),
    Action.MACHINE_VIEW: frozenset({_O, _A, _M, _G}),
    Action.MACHINE_MANAGE: frozenset({_O, _A}),
    Action.SESSION_VIEW: frozenset({_O, _A, _M, _G}),
    Action.SESSION_ACCESS: frozenset({_O, _A, _M}),
    Action.API_KEY_USE: frozenset({_O, _A, _M}),
    Action.API_KEY_MANAGE_ALL: frozenset({_O, _A}),
    Action.AUDIT_VIEW: frozenset({_O, _A}),
}

# Roles an inviter may hand out: Admins invite Members and Guests, Owners anyone.
GRANTABLE: dict[Role, frozenset[Role]] = {
    _O: frozenset({_O, _A, _M, _G}),
    _A: frozenset({_M, _G}),
    _M: frozenset(),
    _G: frozenset(),
}


def can(role: str | Role, action: Action) -> bool:
    return Role(role) in PERMISSIONS[action]
