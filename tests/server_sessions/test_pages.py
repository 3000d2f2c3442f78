"""Dashboard pages apply the same checks as the API: workspace role for the page, the
three session checks for a session's page and its live output."""

from __future__ import annotations

import pytest
from cmdop_server.machines.models import JoinToken, Machine
from cmdop_server.sessions.models import Status
from django.test import Client

from tests.server_sessions.helpers import add_member, make_session, make_workspace

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]


def _client(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def _world():
    ws, owner = make_workspace()
    m = Machine.unscoped.create(workspace=ws, hostname="web-1", public_id="m_p",
                                enrollment="join_token")
    observer, member = add_member(ws), add_member(ws)
    s = make_session(ws, m, Status.CONNECTED, owner, observers=[observer])
    return ws, owner, observer, member, s


def test_pages_need_sign_in():
    ws, *_ = _world()
    resp = Client().get(f"/w/{ws.slug}/machines/")
    assert resp.status_code == 302 and "/login/" in resp["Location"]


def test_machines_page_and_join_tokens_by_role():
    ws, owner, _, member, _ = _world()
    page = _client(member).get(f"/w/{ws.slug}/machines/")
    assert page.status_code == 200 and b"web-1" in page.content
    assert b"Create join token" not in page.content
    assert _client(member).post(f"/w/{ws.slug}/machines/", {"name": "x"}).status_code == 403
    made = _client(owner).post(f"/w/{ws.slug}/machines/", {"name": "x", "ttl": 600,
                                                           "usage_limit": 2})
    assert made.status_code == 200 and b"jt_" in made.content
    assert JoinToken.objects.in_workspace(ws).get().usage_limit == 2
    other, stranger = make_workspace()
    assert _client(stranger).get(f"/w/{ws.slug}/machines/").status_code == 404


def test_session_page_follows_the_three_checks():
    """The page is the terminal; its live I/O is the WebSocket (test_terminal_socket.py)."""
    ws, owner, observer, member, s = _world()
    url = f"/w/{ws.slug}/sessions/{s.public_id}/"
    op_page = _client(owner).get(url)
    assert op_page.status_code == 200 and b'data-role="operator"' in op_page.content
    assert b'id="close-session"' in op_page.content
    assert f'data-socket-path="{url}terminal"'.encode() in op_page.content
    ob_page = _client(observer).get(url)
    assert ob_page.status_code == 200 and b'data-role="observer"' in ob_page.content
    assert b'id="close-session"' not in ob_page.content
    assert _client(member).get(url).status_code == 403
    invite = {"user_id": member.pk, "role": "operator"}
    assert _client(observer).post(url, invite).status_code == 403  # only an operator invites
    other, stranger = make_workspace()
    assert _client(stranger).get(f"/w/{other.slug}/sessions/{s.public_id}/").status_code == 404


def test_a_pending_session_shows_its_terminal_and_a_closed_one_is_refused():
    ws, owner, *_ = _world()
    machine = Machine.unscoped.get(workspace=ws)
    pending = make_session(ws, machine, Status.PENDING, owner)
    closed = make_session(ws, machine, Status.CLOSED, owner)
    assert _client(owner).get(f"/w/{ws.slug}/sessions/{pending.public_id}/").status_code == 200
    assert _client(owner).get(f"/w/{ws.slug}/sessions/{closed.public_id}/").status_code == 409


def test_sessions_page_lists_only_your_sessions():
    ws, owner, observer, member, s = _world()
    assert s.public_id.encode() in _client(observer).get(f"/w/{ws.slug}/sessions/").content
    assert s.public_id.encode() not in _client(member).get(f"/w/{ws.slug}/sessions/").content


def test_audit_page_filters_and_export():
    from cmdop_server import audit

    ws, owner, _, member, _ = _world()
    audit.record("test.ok", workspace=ws, user=owner)
    audit.record("test.refused", workspace=ws, user=owner, success=False, reason="nope")
    page = _client(owner).get(f"/w/{ws.slug}/audit/", {"success": "false"})
    assert page.status_code == 200
    assert b"test.refused" in page.content and b"test.ok" not in page.content
    export = _client(owner).get(f"/w/{ws.slug}/audit/", {"export": "jsonl"})
    assert b"test.ok" in b"".join(export.streaming_content)
    assert _client(member).get(f"/w/{ws.slug}/audit/").status_code == 403
