"""The console: ``/`` leads to the signed-in person's workspaces, every page has the site's
navigation and stylesheet, sessions can be joined, the audit page shows members'
authentication events, API keys are created once-shown, and every form carries CSRF."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cmdop_server import audit
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity.models import ApiKey
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Status
from django.test import Client

from tests.server_sessions.helpers import add_member, make_session, make_workspace

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]

TEMPLATES = Path(__file__).resolve().parents[2] / "server" / "src" / "cmdop_server"


def _client(user, csrf: bool = False) -> Client:
    c = Client(enforce_csrf_checks=csrf)
    c.force_login(user)
    return c


def test_home_lists_your_workspaces_and_needs_sign_in():
    ws, owner = make_workspace()
    other, _ = make_workspace()
    page = _client(owner).get("/")
    assert page.status_code == 200
    assert f"/w/{ws.slug}/machines/".encode() in page.content
    assert f"/w/{other.slug}/".encode() not in page.content
    assert Client().get("/")["Location"].startswith("/login/")


def test_every_page_has_navigation_and_the_stylesheet():
    ws, owner = make_workspace()
    c = _client(owner)
    for url in ("/", "/tokens/", f"/w/{ws.slug}/machines/", f"/w/{ws.slug}/sessions/",
                f"/w/{ws.slug}/audit/"):
        body = c.get(url).content.decode()
        assert 'aria-label="Site"' in body and "/assets/cmdop.css" in body, url
        assert "style=" not in body and "<script>" not in body, url
    assert c.get("/assets/cmdop.css").status_code == 200


def test_sessions_list_offers_join_for_live_sessions_only():
    ws, owner = make_workspace()
    m = Machine.unscoped.create(workspace=ws, hostname="web-1", public_id="m_c",
                                enrollment="join_token")
    live = make_session(ws, m, Status.CONNECTED, owner)
    past = make_session(ws, m, Status.CLOSED, owner)
    body = _client(owner).get(f"/w/{ws.slug}/sessions/").content.decode()
    assert f'href="/w/{ws.slug}/sessions/{live.public_id}/"' in body
    assert f'href="/w/{ws.slug}/sessions/{past.public_id}/"' not in body
    assert past.public_id in body


def test_an_operator_invites_a_member_as_observer():
    ws, owner = make_workspace()
    member = add_member(ws)
    m = Machine.unscoped.create(workspace=ws, hostname="web-1", public_id="m_i",
                                enrollment="join_token")
    s = make_session(ws, m, Status.CONNECTED, owner)
    url = f"/w/{ws.slug}/sessions/{s.public_id}/"
    assert member.username.encode() in _client(owner).get(url).content
    assert _client(owner).post(url, {"user_id": member.pk, "role": "observer"}).status_code == 302
    page = _client(member).get(url)
    assert page.status_code == 200 and b'data-role="observer"' in page.content
    assert _client(owner).post(url, {"user_id": "x", "role": "boss"}).status_code == 400


def test_audit_page_shows_members_sign_ins_and_audits_its_export():
    ws, owner = make_workspace()
    member = add_member(ws)
    stranger = make_workspace()[1]
    audit.record("auth.login", user=member, method="password", ip="192.0.2.7")
    audit.record("auth.login", success=False, user=stranger, method="password",
                 ip="192.0.2.8", reason="bad_password")
    c = _client(owner)
    page = c.get(f"/w/{ws.slug}/audit/", {"scope": "authentication"}).content.decode()
    assert "192.0.2.7" in page and "192.0.2.8" not in page
    assert "192.0.2.7" not in c.get(f"/w/{ws.slug}/audit/").content.decode()
    export = c.get(f"/w/{ws.slug}/audit/", {"scope": "authentication", "export": "csv"})
    assert b"192.0.2.7" in b"".join(export.streaming_content)
    assert AuditEvent.objects.filter(event="audit.export", workspace_id=ws.pk).exists()
    assert _client(member).get(f"/w/{ws.slug}/audit/").status_code == 403


def test_api_key_is_shown_once_and_listed_by_prefix_and_last_four():
    ws, owner = make_workspace()
    c = _client(owner)
    made = c.post("/keys/", {"workspace": ws.slug, "name": "laptop"})
    assert made.status_code == 200 and made["Cache-Control"] == "no-store"
    clear = re.search(r'id="new-key"[^>]*value="([^"]+)"', made.content.decode())[1]
    key = ApiKey.objects.in_workspace(ws).get(name="laptop")
    listing = c.get("/tokens/").content.decode()
    assert clear not in listing and f"{key.prefix}…{key.last_four}" in listing
    assert "never" in listing  # last used
    assert c.post("/keys/", {"workspace": "nope", "name": "x"}).status_code == 404
    assert c.post("/keys/", {"workspace": ws.slug, "name": ""}).status_code == 400


def test_every_post_form_carries_csrf_and_a_post_without_it_is_refused():
    forms = 0
    for template in TEMPLATES.rglob("templates/cmdop/*.html"):
        text = template.read_text()
        for form in re.findall(r"<form[^>]*method=\"post\"[^>]*>(.*?)</form>", text, re.S):
            forms += 1
            assert "{% csrf_token %}" in form, template.name
    assert forms >= 10
    ws, owner = make_workspace()
    assert _client(owner, csrf=True).post("/keys/", {"workspace": ws.slug,
                                                     "name": "x"}).status_code == 403
