"""The permission matrix, generated from the URL conf: every API operation × every role ×
own/other workspace. An operation without a rule here (auth=workspace(Action) or user, or
listed as PUBLIC) fails, as does one without a sample request."""

from __future__ import annotations

import json
import re

import pytest
from cmdop_server.api.auth import ResourceAuth, UserAuth, WorkspaceAuth
from cmdop_server.identity import actions
from cmdop_server.identity.models import ApiKey, Membership, Workspace
from cmdop_server.permissions import PERMISSIONS, Role, can
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from ninja.operation import PathView

from tests.server.helpers import bearer, make_user, tokens_for

PUBLIC = {
    ("POST", "/api/v1/oauth/device_authorization"),
    ("POST", "/api/v1/oauth/token"),
    ("POST", "/api/v1/oauth/revoke"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/"),  # django-ninja's root: always a (JSON) 404 here, docs are off
    ("GET", "/api/agent/v1/openapi.json"),  # the agent protocol's schema (issue 5)
    ("GET", "/api/agent/v1/"),
}

# A request each operation accepts when permitted: (path params, JSON body).
SAMPLES = {
    ("GET", "/api/v1/workspaces/<slug>"): None,
    ("PATCH", "/api/v1/workspaces/<slug>"): {"name": "Renamed"},
    ("GET", "/api/v1/workspaces/<slug>/members"): None,
    ("POST", "/api/v1/workspaces/<slug>/members"): {"username": "{newcomer}", "role": "guest"},
    ("PATCH", "/api/v1/workspaces/<slug>/members/<user_id>"): {"role": "guest"},
    ("DELETE", "/api/v1/workspaces/<slug>/members/<user_id>"): None,
    ("GET", "/api/v1/workspaces/<slug>/api-keys"): None,
    ("POST", "/api/v1/workspaces/<slug>/api-keys"): {"name": "k"},
    ("DELETE", "/api/v1/workspaces/<slug>/api-keys/<key_id>"): None,
}


def _walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield "/" + prefix + str(p.pattern), p.callback


def _path_view(callback) -> PathView | None:
    for cell in getattr(callback, "__closure__", None) or ():
        if isinstance(cell.cell_contents, PathView):
            return cell.cell_contents
    return None


def api_operations():
    """(method, route, auth) for every operation mounted under /api/."""
    ops = []
    for route, callback in _walk(get_resolver().url_patterns):
        if not route.startswith("/api/"):
            continue
        view = _path_view(callback)
        if view is None:
            ops.append(("GET", route, None))
            continue
        for op in view.operations:
            auth = op.auth_callbacks[0] if len(op.auth_callbacks) == 1 else None
            for method in op.methods:
                ops.append((method, route, auth))
    seen, unique = set(), []
    for op in ops:  # django-ninja mounts a path once per operation name
        if op[:2] not in seen:
            seen.add(op[:2])
            unique.append(op)
    return unique


OPS = api_operations()
WORKSPACE_OPS = [(m, r, a) for m, r, a in OPS if isinstance(a, WorkspaceAuth)]
USER_OPS = [(m, r) for m, r, a in OPS if type(a) is UserAuth]


@pytest.mark.unit
@pytest.mark.parametrize(("method", "route", "auth"), OPS, ids=[f"{m} {r}" for m, r, _ in OPS])
def test_every_operation_has_a_rule(method, route, auth):
    if (method, route) in PUBLIC:
        assert auth is None or not isinstance(auth, UserAuth)
        return
    # Other credential kinds (e.g. the agent API's machine credential) declare their rule
    # with a ``permission_rule`` attribute on their auth class.
    assert isinstance(auth, UserAuth) or getattr(auth, "permission_rule", None), (
        f"{method} {route} has no auth rule")
    if isinstance(auth, WorkspaceAuth):
        assert "<slug>" in route
        assert (method, route) in SAMPLES, f"add a sample request for {method} {route}"


@pytest.mark.unit
def test_matrix_covers_the_workspace_api():
    assert len(WORKSPACE_OPS) == len(SAMPLES)


@pytest.mark.unit
def test_the_schema_states_each_workspace_operations_action_and_roles():
    """Every operation with a workspace rule (WorkspaceAuth, or ResourceAuth for one
    machine, session or the audit log) carries its Action and the roles the permission
    table allows; the rest (OAuth, the caller's own account) are outside any workspace."""
    from cmdop_server.api.main import api

    paths = api.get_openapi_schema()["paths"]
    documented = {(method.upper(), path) for path, item in paths.items()
                  for method, op in item.items() if "x-cmdop-action" in op}
    ruled = []
    for method, route, auth in OPS:
        if not isinstance(auth, WorkspaceAuth | ResourceAuth):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        op = paths[path][method.lower()]
        assert op["x-cmdop-action"] == auth.action, f"{method} {route}"
        assert op["x-cmdop-roles"] == sorted(PERMISSIONS[auth.action]), f"{method} {route}"
        ruled.append((method, path))
    assert documented == set(ruled)
    undocumented = {(m.upper(), p) for p, item in paths.items() for m in item} - documented
    assert ruled and all("{slug}" not in path for _, path in undocumented), undocumented


@pytest.fixture
def world(db):
    owner = make_user()
    ws = actions.do_create_workspace(owner, "acme", "Acme")
    actions.do_update_workspace(Membership.objects.in_workspace(ws).get(user=owner),
                                {"guests_enabled": True})
    other_owner = make_user()
    actions.do_create_workspace(other_owner, "rival", "Rival")
    return ws


def _fill(route: str, slug: str, ids: dict) -> str:
    return (route.replace("<slug>", slug).replace("<user_id>", str(ids["user_id"]))
            .replace("<key_id>", str(ids["key_id"])))


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"])
@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("where", ["own", "other"])
@pytest.mark.parametrize(("method", "route", "auth"), WORKSPACE_OPS,
                         ids=[f"{m} {r}" for m, r, _ in WORKSPACE_OPS])
def test_matrix(world, role, where, method, route, auth):
    ws = world
    caller = make_user()
    owner_m = Membership.objects.in_workspace(ws).get(role=Role.OWNER)
    caller_m = Membership(workspace=ws, user=caller, role=role)
    caller_m.save()
    target = make_user()
    actions.do_add_member(owner_m, target, Role.MEMBER)
    # the key a caller revokes is their own; revoking others' keys is tested below
    key, _ = actions.do_create_api_key(caller_m, "mine")
    ids = {"user_id": target.pk, "key_id": key.pk}
    token = tokens_for(caller)["access_token"]
    slug = ws.slug if where == "own" else "rival"
    body = SAMPLES[(method, route)]
    if body and "username" in body:
        body = {**body, "username": make_user().username}
    client = Client()
    resp = client.generic(method, _fill(route, slug, ids), data=json.dumps(body) if body else "",
                          content_type="application/json", **bearer(token))
    assert resp["Content-Type"].startswith("application/json")
    if where == "other":
        assert resp.status_code == 404, resp.content  # other tenants look like nothing
    elif not can(role, auth.action):
        assert resp.status_code == 403, resp.content
    else:
        assert 200 <= resp.status_code < 300, resp.content
    assert Workspace.objects.get(slug="rival").name == "Rival"


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"])
@pytest.mark.parametrize(("method", "route"), USER_OPS + [(m, r) for m, r, _ in WORKSPACE_OPS])
def test_no_credential_is_401(method, route):
    resp = Client().generic(method, _fill(route, "acme", {"user_id": 1, "key_id": 1}))
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"])
@pytest.mark.parametrize(("role", "status"), [(Role.MEMBER, 404), (Role.ADMIN, 204),
                                              (Role.OWNER, 204)])
def test_only_admins_revoke_other_peoples_keys(world, role, status):
    owner_m = Membership.objects.in_workspace(world).get(role=Role.OWNER)
    caller, target = make_user(), make_user()
    actions.do_add_member(owner_m, caller, role)
    target_m = actions.do_add_member(owner_m, target, Role.MEMBER)
    key, _ = actions.do_create_api_key(target_m, "theirs")
    token = tokens_for(caller)["access_token"]
    resp = Client().delete(f"/api/v1/workspaces/acme/api-keys/{key.pk}", **bearer(token))
    assert resp.status_code == status


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"])
def test_admins_cannot_grant_admin_and_the_last_owner_stays(world):
    owner_m = Membership.objects.in_workspace(world).get(role=Role.OWNER)
    admin = make_user()
    actions.do_add_member(owner_m, admin, Role.ADMIN)
    token = tokens_for(admin)["access_token"]
    resp = Client().post("/api/v1/workspaces/acme/members",
                         {"username": make_user().username, "role": "admin"},
                         content_type="application/json", **bearer(token))
    assert resp.status_code == 403
    owner_token = tokens_for(owner_m.user)["access_token"]
    resp = Client().delete(f"/api/v1/workspaces/acme/members/{owner_m.user_id}",
                           **bearer(owner_token))
    assert resp.status_code == 409 and resp.json()["error"] == "conflict"


@pytest.mark.unit
def test_unscoped_queries_of_tenant_data_raise():
    from cmdop_server.tenancy import UnscopedQueryError

    with pytest.raises(UnscopedQueryError):
        ApiKey.objects.all()
    with pytest.raises(UnscopedQueryError):
        Membership.objects.filter(role="owner")
