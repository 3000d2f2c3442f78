"""Workspaces, members and API keys. Each operation names its Action in ``auth=``."""

from __future__ import annotations

from ninja import Router, Status

from cmdop_server.api import auth
from cmdop_server.api.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    MemberIn,
    MemberOut,
    MemberPatch,
    WorkspaceIn,
    WorkspaceOut,
    WorkspacePatch,
)
from cmdop_server.errors import ApiError
from cmdop_server.identity import actions
from cmdop_server.identity.models import ApiKey, Membership, User
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action, can

router = Router(tags=["workspaces"])
A = Action


def _out(membership: Membership) -> dict:
    ws = membership.workspace
    return {"slug": ws.slug, "name": ws.name, "guests_enabled": ws.guests_enabled,
            "role": membership.role}


def _member(m: Membership) -> dict:
    return {"user_id": m.user_id, "username": m.user.username, "role": m.role}


@router.get("", auth=auth.user, response=list[WorkspaceOut])
def list_workspaces(request):
    bound = request.auth.principal.workspace
    rows = request.auth.user.memberships.select_related("workspace").order_by("workspace__slug")
    if bound is not None:
        rows = rows.filter(workspace=bound)
    return [_out(m) for m in rows]


@router.post("", auth=auth.user, response={201: WorkspaceOut})
def create_workspace(request, body: WorkspaceIn):
    if request.auth.principal.workspace is not None:
        raise ApiError(403, "forbidden", "API keys cannot create workspaces.")
    ws = actions.do_create_workspace(request.auth.user, body.slug, body.name, client_ip(request))
    return Status(201, {"slug": ws.slug, "name": ws.name, "guests_enabled": ws.guests_enabled,
                        "role": "owner"})


@router.get("/{slug}", auth=auth.workspace(A.WORKSPACE_VIEW), response=WorkspaceOut)
def get_workspace(request, slug: str):
    return _out(request.auth.membership)


@router.patch("/{slug}", auth=auth.workspace(A.WORKSPACE_UPDATE), response=WorkspaceOut)
def update_workspace(request, slug: str, body: WorkspacePatch):
    membership = request.auth.membership
    membership.workspace = actions.do_update_workspace(
        membership, body.model_dump(exclude_none=True), client_ip(request))
    return _out(membership)


@router.get("/{slug}/members", auth=auth.workspace(A.MEMBER_LIST), response=list[MemberOut])
def list_members(request, slug: str):
    rows = (Membership.objects.in_workspace(request.auth.workspace).select_related("user")
            .order_by("user__username"))
    return [_member(m) for m in rows]


@router.post("/{slug}/members", auth=auth.workspace(A.MEMBER_INVITE),
             response={201: MemberOut})
def add_member(request, slug: str, body: MemberIn):
    user = User.objects.filter(username=body.username, is_active=True).first()
    if user is None:
        raise ApiError(404, "not_found", "No such user.")
    m = actions.do_add_member(request.auth.membership, user, body.role, client_ip(request))
    return Status(201, _member(m))


def _target(request, user_id: int) -> Membership:
    m = (Membership.objects.in_workspace(request.auth.workspace).select_related("user")
         .filter(user_id=user_id).first())
    if m is None:
        raise ApiError(404, "not_found", "No such member.")
    return m


@router.patch("/{slug}/members/{user_id}", auth=auth.workspace(A.MEMBER_MANAGE),
              response=MemberOut)
def change_member(request, slug: str, user_id: int, body: MemberPatch):
    m = actions.do_change_role(request.auth.membership, _target(request, user_id), body.role,
                               client_ip(request))
    return _member(m)


@router.delete("/{slug}/members/{user_id}", auth=auth.workspace(A.MEMBER_MANAGE),
               response={204: None})
def remove_member(request, slug: str, user_id: int):
    actions.do_remove_member(request.auth.membership, _target(request, user_id),
                             client_ip(request))
    return Status(204, None)


@router.get("/{slug}/api-keys", auth=auth.workspace(A.API_KEY_USE), response=list[ApiKeyOut])
def list_api_keys(request, slug: str):
    keys = ApiKey.objects.in_workspace(request.auth.workspace).order_by("-created_at")
    if not can(request.auth.membership.role, A.API_KEY_MANAGE_ALL):
        keys = keys.filter(user=request.auth.user)
    return list(keys)


@router.post("/{slug}/api-keys", auth=auth.workspace(A.API_KEY_USE),
             response={201: ApiKeyCreated})
def create_api_key(request, slug: str, body: ApiKeyIn):
    key, clear = actions.do_create_api_key(request.auth.membership, body.name,
                                           client_ip(request))
    return Status(201, ApiKeyOut.model_validate(key).model_dump() | {"key": clear})


@router.delete("/{slug}/api-keys/{key_id}", auth=auth.workspace(A.API_KEY_USE),
               response={204: None})
def revoke_api_key(request, slug: str, key_id: int):
    actions.do_revoke_api_key(request.auth.membership, key_id, client_ip(request))
    return Status(204, None)
