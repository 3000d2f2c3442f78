"""Audit: a scripted list of security-relevant actions gives exactly one row each with the
seed's fields; the hash chain verifies and one flipped byte is caught; export returns
exactly the range and workspace; retention deletes only old rows; the app's role cannot
UPDATE or DELETE audit rows (nor change the retention), only purge past it."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import psycopg
import pytest
from cmdop_server import audit
from cmdop_server.audit import chain
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions as identity_actions
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Status
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from django.utils import timezone

from tests.server_sessions.helpers import (
    enroll,
    make_session,
    make_workspace,
    owner_membership,
    post,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


def _key(ws, user):
    return identity_actions.do_create_api_key(owner_membership(ws, user), "k")[1]


def test_scripted_actions_make_exactly_one_row_each_with_the_seeds_fields():
    ws, owner = make_workspace()
    key = _key(ws, owner)
    base = f"/api/v1/workspaces/{ws.slug}"
    c = Client()
    start = AuditEvent.objects.count()
    agent = enroll(ws, owner, hostname="db-1")  # 2 rows: join token created, machine enrolled
    sid = post(c, f"{base}/sessions", {"machine_id": agent["machine_id"]}, token=key
               ).json()["session_id"]  # session created
    cred = agent["credential"]
    post(c, "/api/agent/v1/events", {"boot_id": "b", "events": [
        {"seq": 1, "type": "session.opened", "session_id": sid, "pid": 9}]}, token=cred)
    wid = post(c, f"{base}/sessions/{sid}/commands", {"command": "id"}, token=key
               ).json()["work_id"]  # command requested
    post(c, "/api/agent/v1/events", {"boot_id": "b", "events": [
        {"seq": 2, "type": "command.result", "work_id": wid, "session_id": sid, "command": "id",
         "exit_code": 1, "duration_ms": 250, "stdout_b64": "", "stderr_b64": "",
         "truncated": False},
        {"seq": 3, "type": "file.result", "work_id": "w_f", "session_id": sid,
         "path": "/etc/passwd", "operation": "read", "bytes": 10, "data_b64": "",
         "truncated": False}]}, token=cred)  # command executed, file accessed
    post(c, "/api/agent/v1/heartbeat", {"version": "0.1.0", "boot_id": "b"},
         token="mc_wrong")  # failed authentication  # noqa: S106
    script = ["machine.join_token.create", "machine.enroll", "session.create",
              "session.opened", "command.request", "command.executed", "file.access",
              "auth.machine"]
    rows = list(AuditEvent.objects.order_by("id")[start:])
    # the API key creation above happened before ``start``
    assert [r.event for r in rows] == script
    by = {r.event: r for r in rows}
    created = by["session.create"]
    assert created.user_id == owner.pk and created.data["machine"] == agent["machine_id"]
    assert created.occurred_at is not None
    ran = by["command.executed"].data
    assert (ran["command"], ran["exit_code"], ran["duration_ms"]) == ("id", 1, 250)
    f = by["file.access"]
    assert (f.data["path"], f.data["operation"], f.occurred_at is not None) == (
        "/etc/passwd", "read", True)
    auth = by["auth.machine"]
    assert (auth.success, auth.method, auth.ip) == (False, "bearer", "127.0.0.1")


def test_chain_verifies_and_one_flipped_byte_is_caught():
    ws, owner = make_workspace()
    for i in range(5):
        audit.record("test.event", workspace=ws, user=owner, ip="::ffff:10.0.0.1", n=i)
    audit.record("test.event", ip="10.0.0.2", reason="no workspace")
    call_command("audit_verify")
    victim = AuditEvent.objects.filter(workspace_id=ws.pk).order_by("id")[2]
    with connections["audit"].cursor() as cursor:  # as the superuser: an attacker with DB access
        cursor.execute("UPDATE audit_auditevent SET reason = 'x' WHERE id = %s", [victim.pk])
    with pytest.raises(CommandError):
        call_command("audit_verify")
    breaks = chain.verify(AuditEvent.objects.order_by("workspace_id", "id"))
    assert [b.row_id for b in breaks] == [victim.pk]


def test_deleting_a_row_in_the_middle_is_caught():
    ws, _ = make_workspace()
    for i in range(4):
        audit.record("test.event", workspace=ws, n=i)
    victim = AuditEvent.objects.filter(workspace_id=ws.pk).order_by("id")[1]
    with connections["audit"].cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
    breaks = chain.verify(AuditEvent.objects.order_by("workspace_id", "id"))
    assert len(breaks) == 1 and "prev_hash" in breaks[0].problem


def test_export_is_exactly_the_range_and_the_workspace():
    ws, owner = make_workspace()
    other, _ = make_workspace()
    now = timezone.now()
    for days_ago in (10, 5, 1):
        row = audit.record("test.event", workspace=ws, n=days_ago)
        AuditEvent.objects.filter(pk=row.pk).update(occurred_at=now - timedelta(days=days_ago))
    audit.record("test.event", workspace=other, n=99)
    key = _key(ws, owner)
    params = {"since": (now - timedelta(days=7)).isoformat(),
              "until": (now - timedelta(days=2)).isoformat()}
    resp = Client().get(f"/api/v1/workspaces/{ws.slug}/audit/export", params,
                        HTTP_AUTHORIZATION=f"Bearer {key}")
    assert resp.status_code == 200 and resp["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in b"".join(resp.streaming_content).splitlines()]
    assert [(r["event"], r["data"]["n"]) for r in lines] == [("test.event", 5)]
    assert all(r["workspace_id"] == ws.pk for r in lines)
    as_csv = Client().get(f"/api/v1/workspaces/{ws.slug}/audit/export",
                          params | {"format": "csv"}, HTTP_AUTHORIZATION=f"Bearer {key}")
    table = list(csv.DictReader(io.StringIO(b"".join(as_csv.streaming_content).decode())))
    assert len(table) == 1 and json.loads(table[0]["data"]) == {"n": 5}


def test_export_needs_audit_view_and_stays_in_the_workspace():
    from tests.server_sessions.helpers import add_member

    ws, owner = make_workspace()
    member = add_member(ws, "member")
    resp = Client().get(f"/api/v1/workspaces/{ws.slug}/audit/export",
                        HTTP_AUTHORIZATION=f"Bearer {_key(ws, member)}")
    assert resp.status_code == 403
    other, other_owner = make_workspace()
    resp = Client().get(f"/api/v1/workspaces/{ws.slug}/audit/export",
                        HTTP_AUTHORIZATION=f"Bearer {_key(other, other_owner)}")
    assert resp.status_code == 404


def test_retention_deletes_only_rows_older_than_the_setting(settings, monkeypatch):
    settings.CMDOP_AUDIT_RETENTION_DAYS = 30
    call_command("audit_grants", "postgres", "--retention-days", "30")
    ws, _ = make_workspace()
    now = timezone.now()
    ids = {}
    for age in (31, 29, 0):
        # written at that time (not back-dated afterwards, which would break the chain)
        monkeypatch.setattr(audit.timezone, "now", lambda age=age: now - timedelta(days=age))
        ids[age] = audit.record("test.event", workspace=ws, age=age).pk
    monkeypatch.undo()
    call_command("purge_audit")
    left = set(AuditEvent.objects.filter(workspace_id=ws.pk).values_list("pk", flat=True))
    assert ids[31] not in left and {ids[29], ids[0]} <= left
    # the remaining chain still verifies (its oldest row is the anchor)
    assert chain.verify(AuditEvent.objects.filter(workspace_id=ws.pk).order_by("id")) == []


def test_the_app_role_cannot_update_or_delete_audit_rows(postgres_server):
    db = settings.DATABASES["audit"]["NAME"]
    postgres_server.psql("DROP ROLE IF EXISTS cmdop_app; CREATE ROLE cmdop_app LOGIN;")
    call_command("audit_grants", "cmdop_app", "--retention-days", "90")
    row = audit.record("test.event", reason="keep me")
    dsn = postgres_server.dsn(dbname=db, user="cmdop_app")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO audit_auditevent (occurred_at, event, success, "
                         "user_label, method, reason, data, prev_hash, row_hash) VALUES "
                         "(now(), 'x', true, '', '', '', '{}', '', '')")
            assert conn.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0] >= 2
            for statement in ("UPDATE audit_auditevent SET reason = 'gone'",
                              "DELETE FROM audit_auditevent", "TRUNCATE audit_auditevent",
                              "UPDATE audit_retention SET days = 1"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
            # retention is the one way rows leave, and only past the owner's period
            assert conn.execute("SELECT audit_purge()").fetchone()[0] == 0
        assert AuditEvent.objects.get(pk=row.pk).reason == "keep me"
    finally:
        with connections["audit"].cursor() as cursor:  # leave the test DB as we found it
            cursor.execute("REVOKE ALL ON audit_auditevent FROM cmdop_app")
            cursor.execute("REVOKE ALL ON SEQUENCE audit_auditevent_id_seq FROM cmdop_app")
            cursor.execute("REVOKE ALL ON audit_retention FROM cmdop_app")
            cursor.execute("REVOKE ALL ON FUNCTION audit_purge() FROM cmdop_app")
        postgres_server.psql("DROP OWNED BY cmdop_app; DROP ROLE cmdop_app;", dbname=db)


def test_audit_store_down_refuses_a_privileged_operation(monkeypatch):
    ws, owner = make_workspace()
    m = Machine.unscoped.create(workspace=ws, hostname="h", public_id="m_d",
                                enrollment="join_token")
    s = make_session(ws, m, Status.CONNECTED, owner)
    key = _key(ws, owner)
    real = audit.record

    def down(event, **kw):
        if event == "command.request":
            raise psycopg.OperationalError("audit store unreachable")
        return real(event, **kw)

    monkeypatch.setattr(audit, "record", down)
    resp = post(Client(), f"/api/v1/workspaces/{ws.slug}/sessions/{s.public_id}/commands",
                {"command": "rm -rf /srv/data"}, token=key)
    assert resp.status_code >= 500
    from cmdop_server import redis_client, workqueue

    assert redis_client.client().xlen(workqueue.stream_key(m.pk)) == 0  # nothing was sent
