"""The agent protocol v1 against the real endpoints: enrollment (join token and device
flow), heartbeat, the work long-poll, acks, event batches with idempotent seq."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import timedelta

import pytest
from cmdop_server import audit as audit_mod
from cmdop_server import credentials, workqueue
from cmdop_server.audit.models import AuditEvent
from cmdop_server.machines import actions as machine_actions
from cmdop_server.machines.models import JoinToken, Machine
from cmdop_server.sessions.models import Status
from django.test import AsyncClient, Client
from django.utils import timezone

from tests.server.helpers import tokens_for
from tests.server_sessions.helpers import (
    agent_poll,
    enroll,
    make_session,
    make_workspace,
    owner_membership,
    post,
)

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

BODY = {"hostname": "web-1", "os": "Linux 6.1.0 x86_64 (debian 12)", "version": "0.1.0"}


def _join_token(ws, owner, **kw):
    return machine_actions.do_create_join_token(owner_membership(ws, owner), "t",
                                                kw.pop("ttl", 600), **kw)


def test_enroll_with_join_token_stores_hashes_only():
    ws, owner = make_workspace()
    jt, raw = _join_token(ws, owner)
    resp = post(Client(), "/api/agent/v1/enroll", {**BODY, "join_token": raw})
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["workspace"] == ws.slug and body["credential"].startswith("mc_")
    assert body["heartbeat_interval"] == 30 and body["poll_timeout"] == 25
    m = Machine.objects.in_workspace(ws).get(public_id=body["machine_id"])
    assert m.credential_hash == credentials.sha256_hex(body["credential"])
    assert JoinToken.objects.in_workspace(ws).get().token_hash == credentials.sha256_hex(raw)
    row = AuditEvent.objects.filter(event="machine.enroll").get()
    assert row.success and row.workspace_id == ws.pk and row.data["hostname"] == "web-1"


@pytest.mark.parametrize(("case", "code"), [
    ("unknown", "join_token_invalid"), ("revoked", "join_token_invalid"),
    ("expired", "join_token_expired"), ("exhausted", "join_token_exhausted")])
def test_join_token_refusals(case, code):
    ws, owner = make_workspace()
    jt, raw = _join_token(ws, owner)
    if case == "unknown":
        raw = "jt_nope"
    elif case == "revoked":
        machine_actions.do_revoke_join_token(owner_membership(ws, owner), jt.pk)
    elif case == "expired":
        JoinToken.unscoped.filter(pk=jt.pk).update(expires_at=timezone.now() - timedelta(1))
    else:
        enroll_body = {**BODY, "join_token": raw, "hostname": "first"}
        assert post(Client(), "/api/agent/v1/enroll", enroll_body).status_code == 201
    resp = post(Client(), "/api/agent/v1/enroll", {**BODY, "join_token": raw})
    assert resp.status_code == 401 and resp.json()["error"] == code
    assert AuditEvent.objects.filter(event="machine.enroll", success=False,
                                     reason=code).count() == 1


def test_usage_limit_and_hostname_unique_per_workspace():
    ws, owner = make_workspace()
    _, raw = _join_token(ws, owner, usage_limit=3)
    assert post(Client(), "/api/agent/v1/enroll", {**BODY, "join_token": raw}).status_code == 201
    again = post(Client(), "/api/agent/v1/enroll", {**BODY, "join_token": raw,
                                                    "hostname": "WEB-1"})
    assert again.status_code == 409 and again.json()["error"] == "hostname_taken"
    # the refused enrollment did not use up the token
    assert JoinToken.objects.in_workspace(ws).get().uses == 1
    other, other_owner = make_workspace()
    _, raw2 = _join_token(other, other_owner)
    assert post(Client(), "/api/agent/v1/enroll",
                {**BODY, "join_token": raw2}).status_code == 201


def test_old_agent_is_426():
    ws, owner = make_workspace()
    _, raw = _join_token(ws, owner)
    resp = post(Client(), "/api/agent/v1/enroll", {**BODY, "join_token": raw, "version": "0.0.9"})
    assert resp.status_code == 426 and resp.json()["error"] == "unsupported_version"


def test_only_admins_create_join_tokens():
    from cmdop_server.errors import ApiError

    from tests.server_sessions.helpers import add_member

    ws, _ = make_workspace()
    member = add_member(ws, "member")
    with pytest.raises(ApiError):
        machine_actions.do_create_join_token(owner_membership(ws, member), "t", 600)


def test_enroll_with_device_flow_then_use_access_token():
    ws, owner = make_workspace()
    from cmdop_server.identity.models import TokenFamily

    tokens = tokens_for(owner)
    TokenFamily.objects.update(scope="agent")
    resp = post(Client(), "/api/agent/v1/enroll", BODY, token=tokens["access_token"])
    assert resp.status_code == 201, resp.content
    assert "credential" not in resp.json()
    hb = post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b_1"},
              token=tokens["access_token"])
    assert hb.status_code == 200, hb.content


def test_device_flow_token_without_agent_scope_is_refused():
    ws, owner = make_workspace()
    tokens = tokens_for(owner)  # cmdop-cli, scope "api"
    resp = post(Client(), "/api/agent/v1/enroll", BODY, token=tokens["access_token"])
    assert resp.status_code == 403


def test_bad_credentials_are_401_in_the_protocol_shape():
    resp = post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b"}, token="mc_nope")  # noqa: S106
    assert resp.status_code == 401
    assert set(resp.json()) == {"error", "detail"} and resp.json()["error"] == "unauthorized"
    assert post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b"}).status_code == 401


def test_heartbeat_online_and_rotation():
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    assert not m.online
    resp = post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b_1", "sessions": 0},
                token=body["credential"])
    assert resp.status_code == 200 and resp.json()["heartbeat_interval"] == 30
    m.refresh_from_db()
    assert m.online and m.boot_id == "b_1" and m.agent_version == "0.1.0"
    Machine.unscoped.filter(pk=m.pk).update(last_seen_at=timezone.now() - timedelta(seconds=91))
    m.refresh_from_db()
    assert not m.online
    _, new = machine_actions.do_rotate_machine_credential(owner_membership(ws, owner),
                                                          m.public_id)
    old = post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b_1"},
               token=body["credential"])
    assert old.status_code == 401
    assert post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b_1"},
                token=new).status_code == 200


def test_disabled_machine_is_403():
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    machine_actions.do_set_machine_disabled(owner_membership(ws, owner), body["machine_id"], True)
    resp = post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b"},
                token=body["credential"])
    assert resp.status_code == 403 and resp.json()["error"] == "forbidden"


def test_new_boot_disconnects_sessions_of_the_old_boot():
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b_1"}, token=body["credential"])
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.CONNECTED, owner)
    s.boot_id = "b_1"
    s.save()
    post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b_2"}, token=body["credential"])
    s.refresh_from_db()
    assert s.status == Status.DISCONNECTED


# ---- work ----------------------------------------------------------------------------------


def test_poll_returns_queued_work_and_redelivers_until_acked():
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    w1 = workqueue.enqueue(m.pk, "session.input", {"data_b64": "bHMK"}, "s_1")
    w2 = workqueue.enqueue(m.pk, "command.run", {"command": "true", "cwd": "/", "timeout": 5})
    first = agent_poll(body["credential"]).json()
    assert [i["id"] for i in first["items"]] == [w1, w2]
    assert first["items"][0]["session_id"] == "s_1"
    # the response was "lost": polling again with the previous cursor (none) redelivers
    again = agent_poll(body["credential"]).json()
    assert [i["id"] for i in again["items"]] == [w1, w2]
    # after processing: the cursor moves on, nothing new
    assert agent_poll(body["credential"], first["cursor"]).json()["items"] == []
    ack = post(Client(), "/api/agent/v1/work/ack", {"ids": [w1, w2, "w_unknown"]},
               token=body["credential"])
    assert ack.json() == {"acked": 2}
    # a new boot (no cursor) sees nothing: acked items are gone, acks are idempotent
    assert agent_poll(body["credential"]).json()["items"] == []
    assert post(Client(), "/api/agent/v1/work/ack", {"ids": [w1]},
                token=body["credential"]).json() == {"acked": 0}


def test_bad_cursor_is_400():
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    resp = agent_poll(body["credential"], cursor="c_bogus")
    assert resp.status_code == 400 and resp.json()["error"] == "bad_request"


def test_work_posted_during_a_poll_wakes_it(monkeypatch):
    """The parked poll is woken by the enqueue, not by its own deadline: it re-reads once
    and returns the item long before its 20-25 s wait ends. (The latency in milliseconds
    is a figure of bench/fleet.py, not a test threshold.)"""
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    found: list[int] = []  # items each read of the poll found
    real_read = workqueue._read

    async def counted_read(machine_pk, after):
        batch = await real_read(machine_pk, after)
        found.append(len(batch.items))
        return batch

    monkeypatch.setattr(workqueue, "_read", counted_read)

    async def scenario():
        client = AsyncClient()
        headers = {"Authorization": f"Bearer {body['credential']}"}
        poll = asyncio.create_task(client.get("/api/agent/v1/work", {"wait": 25},
                                              headers=headers))
        # two empty reads: on arrival, and when this loop's wake-up subscription went live
        # (a new subscription wakes every waiter once); from then on only the publish of
        # the enqueue below can wake the poll before its deadline
        while len(found) < 2:
            assert not poll.done(), poll.result().content
            await asyncio.sleep(0.01)
        await asyncio.to_thread(workqueue.enqueue, m.pk, "session.input", {"data_b64": "eA=="})
        return await asyncio.wait_for(poll, timeout=15)

    resp = asyncio.run(scenario())
    assert resp.status_code == 200 and len(resp.json()["items"]) == 1
    assert found[-1] == 1 and not any(found[:-1]), found


def test_empty_poll_waits_then_returns_nothing():
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    started = time.perf_counter()
    resp = agent_poll(body["credential"], wait=0.5)
    assert resp.json()["items"] == [] and 0.35 < time.perf_counter() - started < 5


def test_an_agent_never_receives_another_workspaces_work():
    ws_a, owner_a = make_workspace()
    ws_b, owner_b = make_workspace()
    a = enroll(ws_a, owner_a, hostname="same")
    b = enroll(ws_b, owner_b, hostname="same")
    mb = Machine.objects.in_workspace(ws_b).get()
    workqueue.enqueue(mb.pk, "command.run", {"command": "id", "cwd": "/", "timeout": 5})
    assert agent_poll(a["credential"], wait=0.2).json()["items"] == []
    assert len(agent_poll(b["credential"]).json()["items"]) == 1
    # nor can it acknowledge (delete) B's work
    item = agent_poll(b["credential"]).json()["items"][0]
    assert post(Client(), "/api/agent/v1/work/ack", {"ids": [item["id"]]},
                token=a["credential"]).json() == {"acked": 0}


# ---- events --------------------------------------------------------------------------------


def _events(cred, boot, events):
    return post(Client(), "/api/agent/v1/events", {"boot_id": boot, "events": events},
                token=cred)


def test_events_are_idempotent_by_seq_and_refuse_gaps():
    from cmdop_server import output

    ws, owner = make_workspace()
    body = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.CONNECTED, owner)
    out = [{"seq": i, "type": "session.output", "session_id": s.public_id,
            "data_b64": base64.b64encode(b"x%d" % i).decode()} for i in (1, 2, 3)]
    assert _events(body["credential"], "b_1", out[:2]).json() == {"accepted_through": 2}
    # the same batch again (response lost) plus one new event: only seq 3 is stored
    assert _events(body["credential"], "b_1", out).json() == {"accepted_through": 3}
    assert output.held_bytes(s.pk) == 6
    gap = _events(body["credential"], "b_1", [{**out[0], "seq": 5}])
    assert gap.status_code == 400 and "gap" in gap.json()["detail"]
    # seq restarts at 1 with a new boot
    assert _events(body["credential"], "b_2", out[:1]).json() == {"accepted_through": 1}


def test_results_are_audited_with_the_seeds_fields():
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.PENDING, owner)
    resp = _events(body["credential"], "b_1", [
        {"seq": 1, "type": "session.opened", "session_id": s.public_id, "work_id": "w_a",
         "pid": 42},
        {"seq": 2, "type": "command.result", "work_id": "w_b", "session_id": s.public_id,
         "command": "uname -a", "exit_code": 0, "duration_ms": 12, "stdout_b64": "",
         "stderr_b64": "", "truncated": False},
        {"seq": 3, "type": "file.result", "work_id": "w_c", "session_id": s.public_id,
         "path": "/etc/hostname", "operation": "read", "bytes": 6, "data_b64": "d2ViLTEK",
         "truncated": False},
    ])
    assert resp.status_code == 200, resp.content
    s.refresh_from_db()
    assert s.status == Status.CONNECTED and s.pid == 42
    cmd = AuditEvent.objects.get(event="command.executed")
    assert (cmd.data["command"], cmd.data["exit_code"], cmd.data["duration_ms"]) == (
        "uname -a", 0, 12)
    f = AuditEvent.objects.get(event="file.access")
    assert (f.data["path"], f.data["operation"]) == ("/etc/hostname", "read")
    assert f.occurred_at is not None


def test_audit_store_down_refuses_the_batch(monkeypatch):
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.CONNECTED, owner)

    def down(*a, **kw):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(audit_mod, "record", down)
    resp = _events(body["credential"], "b_1", [
        {"seq": 1, "type": "command.result", "work_id": "w_b", "session_id": s.public_id,
         "command": "id", "exit_code": 0, "duration_ms": 1, "stdout_b64": "",
         "stderr_b64": "", "truncated": False}])
    assert resp.status_code >= 500
    monkeypatch.undo()
    assert _events(body["credential"], "b_1", [
        {"seq": 1, "type": "session.output", "session_id": s.public_id,
         "data_b64": "eA=="}]).json() == {"accepted_through": 1}


def test_openapi_documents_the_agent_protocol():
    schema = Client().get("/api/agent/v1/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/api/agent/v1/enroll", "/api/agent/v1/heartbeat", "/api/agent/v1/work",
            "/api/agent/v1/work/ack", "/api/agent/v1/events"} <= paths


def test_silent_machines_sessions_become_disconnected():
    from django.core.management import call_command

    ws, owner = make_workspace()
    body = enroll(ws, owner)
    post(Client(), "/api/agent/v1/heartbeat", {**BODY, "boot_id": "b_1"}, token=body["credential"])
    m = Machine.objects.in_workspace(ws).get()
    live = make_session(ws, m, Status.CONNECTED, owner)
    call_command("sessions_sweep")
    live.refresh_from_db()
    assert live.status == Status.CONNECTED  # still heart-beating
    Machine.unscoped.filter(pk=m.pk).update(last_seen_at=timezone.now() - timedelta(seconds=91))
    call_command("sessions_sweep")
    live.refresh_from_db()
    assert live.status == Status.DISCONNECTED
    assert AuditEvent.objects.filter(event="machine.silent").count() == 1


def test_agent_dropped_and_timed_out_are_recorded():
    ws, owner = make_workspace()
    body = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.CONNECTED, owner)
    resp = _events(body["credential"], "b_1", [
        {"seq": 1, "type": "command.result", "work_id": "w_t", "session_id": s.public_id,
         "command": "sleep 99", "exit_code": -9, "duration_ms": 60000, "stdout_b64": "",
         "stderr_b64": "", "truncated": False, "timed_out": True},
        {"seq": 2, "type": "agent.dropped", "dropped_type": "session.output",
         "session_id": s.public_id, "detail": "refused as a single event"}])
    assert resp.json() == {"accepted_through": 2}
    assert AuditEvent.objects.get(event="command.executed").data["timed_out"] is True
    dropped = AuditEvent.objects.get(event="agent.dropped")
    assert not dropped.success and dropped.reason == "session.output"
