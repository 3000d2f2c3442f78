"""Authentication events (no workspace) are exportable (issue 12.2): a workspace's Owners
and Admins export its members' sign-ins, failures, device-flow and token events; the site's
administrators export every row that belongs to no workspace. Same filters and formats as
the workspace export; every export is itself audited."""

import csv
import io
import json
from datetime import timedelta

import pytest
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions
from cmdop_server.identity.models import Membership
from django.test import Client
from django.utils import timezone

from tests.server.helpers import PASSWORD, bearer, make_user, tokens_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]

AUTH_EXPORT = "/api/v1/workspaces/acme/audit/authentication/export"


def _rows(resp) -> list[dict]:
    assert resp.status_code == 200, resp.content
    return [json.loads(line) for line in b"".join(resp.streaming_content).splitlines()]


@pytest.fixture
def acme():
    """acme: an owner, an admin, a member who signs in (and fails once); an outsider who
    signs in too; a failed sign-in naming nobody."""
    owner, admin, member, outsider = (make_user(n) for n in ("own", "adm", "mem", "out"))
    ws = actions.do_create_workspace(owner, "acme", "Acme")
    actor = Membership.objects.in_workspace(ws).get(user=owner)
    actions.do_add_member(actor, admin, "admin")
    actions.do_add_member(actor, member, "member")
    for who in (member, outsider):
        Client().post("/login/", {"username": who.username, "password": PASSWORD},
                      REMOTE_ADDR="198.51.100.4")
    Client().post("/login/", {"username": member.username, "password": "wrong"},
                  REMOTE_ADDR="198.51.100.5")
    Client().post("/login/", {"username": "nobody-at-all", "password": "wrong"},
                  REMOTE_ADDR="198.51.100.6")
    return {"owner": owner, "admin": admin, "member": member, "outsider": outsider,
            "tokens": {u.username: tokens_for(u)["access_token"] for u in (owner, admin, member)}}


def test_owners_and_admins_export_their_members_authentication(acme):
    for who in ("own", "adm"):
        rows = _rows(Client().get(AUTH_EXPORT, **bearer(acme["tokens"][who])))
        users = {r["user_label"] for r in rows}
        assert "mem" in users and "out" not in users and "" not in users
        assert all(r["event"].startswith("auth.") and r["workspace_id"] is None for r in rows)
        member = [(r["event"], r["success"], r["ip"]) for r in rows if r["user_label"] == "mem"]
        assert ("auth.login", True, "198.51.100.4") in member
        assert ("auth.login", False, "198.51.100.5") in member  # the seed: monitor failures
        assert ("auth.token.issue", True, "127.0.0.1") in member
    # a Member does not see the others' sign-ins
    assert Client().get(AUTH_EXPORT, **bearer(acme["tokens"]["mem"])).status_code == 403


def test_the_same_filters_and_formats(acme):
    token = acme["tokens"]["own"]
    later = (timezone.now() + timedelta(minutes=5)).isoformat()
    assert _rows(Client().get(AUTH_EXPORT, {"since": later}, **bearer(token))) == []
    assert _rows(Client().get(AUTH_EXPORT, {"until": later}, **bearer(token)))
    resp = Client().get(AUTH_EXPORT, {"format": "csv"}, **bearer(token))
    table = list(csv.DictReader(io.StringIO(b"".join(resp.streaming_content).decode())))
    assert resp["Content-Type"] == "text/csv" and {r["user_label"] for r in table} >= {"mem"}
    assert Client().get(AUTH_EXPORT, {"format": "xml"}, **bearer(token)).status_code == 400
    exports = AuditEvent.objects.filter(event="audit.export", user_id=acme["owner"].pk)
    assert {e.data["scope"] for e in exports} == {"authentication"}


def test_site_administrators_export_every_row_without_a_workspace(acme):
    site = "/api/v1/audit/export"
    assert Client().get(site, **bearer(acme["tokens"]["own"])).status_code == 403
    acme["admin"].is_superuser = True
    acme["admin"].save()
    rows = _rows(Client().get(site, **bearer(acme["tokens"]["adm"])))
    assert all(r["workspace_id"] is None for r in rows)
    labels = {(r["event"], r["user_label"], r["success"]) for r in rows}
    assert {("auth.login", "out", True), ("auth.login", "mem", False),
            ("auth.login", "", False)} <= labels  # everyone, and failures naming nobody
    assert any(r["data"].get("username") == "nobody-at-all" for r in rows)
    table = Client().get(site, {"format": "csv"}, **bearer(acme["tokens"]["adm"]))
    assert table["Content-Type"] == "text/csv"
    assert AuditEvent.objects.filter(event="audit.export", user_id=acme["admin"].pk,
                                     workspace_id=None).exists()
