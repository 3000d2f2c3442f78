"""The seed's three checks and operator/observer table on every session endpoint:
endpoint × caller (operator, observer, member without a role, other workspace) × status.
A route with <session_id> missing from ENDPOINTS fails the completeness test."""

from __future__ import annotations

import json

import pytest
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions as identity_actions
from cmdop_server.identity.models import Membership
from cmdop_server.machines.models import Machine
from cmdop_server.permissions import Role
from cmdop_server.sessions.authz import SESSION_PERMISSIONS, SessionPermission
from cmdop_server.sessions.models import SessionRole, Status
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.server_sessions.helpers import (
    JSON,
    add_member,
    make_session,
    make_workspace,
    owner_membership,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]
P = SessionPermission

# (method, path after /sessions/<session_id>, body, the permission it needs)
ENDPOINTS = [
    ("GET", "", None, P.VIEW_OUTPUT),
    ("GET", "/output", None, P.VIEW_OUTPUT),
    ("POST", "/input", {"data_b64": "bHMK"}, P.SEND_INPUT),
    ("POST", "/resize", {"cols": 100, "rows": 30}, P.RESIZE_TERMINAL),
    ("POST", "/commands", {"command": "uname -a"}, P.EXECUTE_COMMAND),
    ("POST", "/files/read", {"path": "/etc/hostname"}, P.FILE_READ),
    ("POST", "/files/write", {"path": "/srv/app/x", "data_b64": "eA=="}, P.FILE_WRITE),
    ("POST", "/participants", {"user_id": "{member}", "role": "observer"}, P.MANAGE),
    ("POST", "/attachment", {"attached": False}, P.MANAGE),
    ("POST", "/close", None, P.MANAGE),
    ("GET", "/realtime", None, P.VIEW_OUTPUT),
]
CALLERS = ["operator", "observer", "non_participant", "other_workspace"]


def test_the_table_is_the_seeds():
    op, ob = SESSION_PERMISSIONS[SessionRole.OPERATOR], SESSION_PERMISSIONS[SessionRole.OBSERVER]
    seed = {P.VIEW_OUTPUT: (True, True), P.SEND_INPUT: (True, False),
            P.EXECUTE_COMMAND: (True, False), P.FILE_READ: (True, True),
            P.FILE_WRITE: (True, False), P.RESIZE_TERMINAL: (True, False)}
    for perm, (operator, observer) in seed.items():
        assert (perm in op, perm in ob) == (operator, observer), perm
    assert P.MANAGE in op and P.MANAGE not in ob


def _walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield "/" + prefix + str(p.pattern), p.callback


def test_every_session_route_is_in_the_matrix():
    routes = {r.split("<session_id>", 1)[1] for r, _ in _walk(get_resolver().url_patterns)
              if "<session_id>" in r}
    assert routes == {path for _, path, _, _ in ENDPOINTS}


def _world(status: Status):
    ws, owner = make_workspace()
    machine = Machine.unscoped.create(workspace=ws, hostname="h", public_id="m_x",
                                      enrollment="join_token")
    operator, observer = add_member(ws, "member"), add_member(ws, "member")
    bystander, member = add_member(ws, "member"), add_member(ws, "guest")
    session = make_session(ws, machine, status, operator, observers=[observer])
    other_ws, stranger = make_workspace()
    return ws, session, {"operator": (ws, operator), "observer": (ws, observer),
                         "non_participant": (ws, bystander),
                         "other_workspace": (other_ws, stranger)}, member


def _key_for(ws, user) -> str:
    _, raw = identity_actions.do_create_api_key(owner_membership(ws, user), "k")
    return raw


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path", "body", "perm"), ENDPOINTS,
                         ids=[f"{m} {p or '/'}" for m, p, _, _ in ENDPOINTS])
def test_matrix(status, caller, method, path, body, perm):
    ws, session, callers, member = _world(status)
    caller_ws, user = callers[caller]
    key = _key_for(caller_ws, user)
    if body and body.get("user_id") == "{member}":
        body = {**body, "user_id": member.pk}
    # other_workspace: the stranger asks their own workspace for A's session (check 1)
    url = f"/api/v1/workspaces/{caller_ws.slug}/sessions/{session.public_id}{path}"
    before = AuditEvent.objects.filter(event="session.access", success=False).count()
    resp = Client().generic(method, url, data=json.dumps(body) if body else "",
                            content_type=JSON, HTTP_AUTHORIZATION=f"Bearer {key}")
    refused = AuditEvent.objects.filter(event="session.access", success=False).count() - before
    if caller == "other_workspace":
        expected = 404
    elif status not in (Status.CONNECTED, Status.BACKGROUND):
        expected = 409
    elif caller == "non_participant":
        expected = 403
    elif perm not in SESSION_PERMISSIONS[SessionRole(caller)]:
        expected = 403
    else:
        expected = 200
    if expected == 200:
        assert 200 <= resp.status_code < 300, resp.content
        assert refused == 0
    else:
        assert resp.status_code == expected, resp.content
        assert refused == 1, "a refused attempt is audited"
        row = AuditEvent.objects.filter(event="session.access").latest("id")
        assert row.user_id == user.pk and row.data["permission"] == str(perm)


def test_a_member_made_guest_keeps_only_an_observers_seat():
    """Guests are read-only: an operator of a session whom the workspace then makes a Guest
    may still watch and read files, and nothing that writes."""
    ws, session, callers, _ = _world(Status.CONNECTED)
    owner = Membership.objects.in_workspace(ws).select_related("workspace", "user").get(
        role=Role.OWNER)
    identity_actions.do_update_workspace(owner, {"guests_enabled": True})
    _, operator = callers["operator"]
    key = _key_for(ws, operator)
    identity_actions.do_change_role(owner, owner_membership(ws, operator), Role.GUEST)
    base = f"/api/v1/workspaces/{ws.slug}/sessions/{session.public_id}"
    for method, path, body, perm in ENDPOINTS:
        if body and body.get("user_id") == "{member}":
            body = {**body, "user_id": callers["observer"][1].pk}
        resp = Client().generic(method, base + path, data=json.dumps(body) if body else "",
                                content_type=JSON, HTTP_AUTHORIZATION=f"Bearer {key}")
        if perm in SESSION_PERMISSIONS[SessionRole.OBSERVER]:
            assert 200 <= resp.status_code < 300, (path, resp.content)
        else:
            assert resp.status_code == 403, (path, resp.content)
            assert resp.json()["detail"] == f"An observer may not {perm}."


@pytest.mark.parametrize("path", ["", "/output", "/close"])
def test_no_credential_is_401(path):
    ws, session, _, _ = _world(Status.CONNECTED)
    resp = Client().get(f"/api/v1/workspaces/{ws.slug}/sessions/{session.public_id}{path}")
    assert resp.status_code in (401, 405) and resp.json()["error"] in (
        "unauthorized", "method_not_allowed")


def test_unknown_session_is_404_and_audited():
    ws, owner = make_workspace()
    key = _key_for(ws, owner)
    resp = Client().get(f"/api/v1/workspaces/{ws.slug}/sessions/s_nope",
                        HTTP_AUTHORIZATION=f"Bearer {key}")
    assert resp.status_code == 404
    assert AuditEvent.objects.filter(event="session.access", success=False,
                                     reason="not_in_workspace").exists()


# ---- machine and join-token endpoints: workspace role × own/other ---------------------------

MACHINE_OPS = [
    ("GET", "/machines", None, False),
    ("POST", "/join-tokens", {"name": "t", "ttl_seconds": 600}, True),
    ("GET", "/join-tokens", None, True),
    ("DELETE", "/join-tokens/{jt}", None, True),
    ("POST", "/machines/m_x/credential", None, True),
    ("POST", "/machines/m_x/disable", {"disabled": True}, True),
]


@pytest.mark.parametrize("role", ["owner", "admin", "member", "guest"])
@pytest.mark.parametrize("where", ["own", "other"])
@pytest.mark.parametrize(("method", "path", "body", "admin_only"), MACHINE_OPS,
                         ids=[f"{m} {p}" for m, p, _, _ in MACHINE_OPS])
def test_machine_endpoints(role, where, method, path, body, admin_only):
    from cmdop_server.machines import actions as machine_actions

    ws, owner = make_workspace()
    ws.guests_enabled = True
    ws.save()
    Machine.unscoped.create(workspace=ws, hostname="h", public_id="m_x", enrollment="join_token")
    jt, _ = machine_actions.do_create_join_token(owner_membership(ws, owner), "t", 600)
    caller = owner if role == "owner" else add_member(ws, role)
    other, _ = make_workspace()
    add_member(other, "owner", user=caller)
    key = _key_for(ws if where == "own" else other, caller)
    slug = ws.slug if where == "own" else other.slug
    url = f"/api/v1/workspaces/{slug}{path}".replace("{jt}", str(jt.pk))
    resp = Client().generic(method, url, data=json.dumps(body) if body else "",
                            content_type=JSON, HTTP_AUTHORIZATION=f"Bearer {key}")
    if where == "other":
        # the caller owns the other workspace, but the machine and token are not there
        assert resp.status_code in (200, 201, 404), resp.content
        if method != "GET" and path != "/join-tokens":
            assert resp.status_code == 404
        assert Machine.objects.in_workspace(ws).get().disabled_at is None
    elif admin_only and role not in ("owner", "admin"):
        assert resp.status_code == 403, resp.content
    else:
        assert 200 <= resp.status_code < 300, resp.content
