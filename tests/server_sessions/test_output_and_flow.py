"""A session end to end through the real endpoints (user API ⇄ Redis ⇄ agent API), and the
bounded output buffer: a flood keeps Redis memory bounded and readers see a drop marker."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from cmdop_server import output
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions as identity_actions
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Session, Status
from django.test import AsyncClient, Client, override_settings

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


def _key(ws, user):
    return identity_actions.do_create_api_key(owner_membership(ws, user), "k")[1]


def test_a_session_end_to_end():
    ws, owner = make_workspace()
    agent = enroll(ws, owner, hostname="web-1")
    cred, key, c = agent["credential"], _key(ws, owner), Client()
    base = f"/api/v1/workspaces/{ws.slug}"
    made = post(c, f"{base}/sessions", {"machine_id": agent["machine_id"]}, token=key)
    assert made.status_code == 201, made.content
    sid = made.json()["session_id"]
    assert AuditEvent.objects.filter(event="session.create", user_id=owner.pk).count() == 1
    # the agent gets session.open, opens the PTY, reports it
    work = agent_poll(cred).json()
    (open_item,) = work["items"]
    assert open_item["type"] == "session.open" and open_item["session_id"] == sid
    ev = post(c, "/api/agent/v1/events", {"boot_id": "b_1", "events": [
        {"seq": 1, "type": "session.opened", "session_id": sid, "work_id": open_item["id"],
         "pid": 7}]}, token=cred)
    assert ev.json() == {"accepted_through": 1}
    post(c, "/api/agent/v1/work/ack", {"ids": [open_item["id"]]}, token=cred)
    assert Session.objects.in_workspace(ws).get().status == Status.CONNECTED
    # the operator types; the agent receives exactly that input
    sent = post(c, f"{base}/sessions/{sid}/input", {"data_b64": "bHMK"}, token=key)
    assert sent.status_code == 202
    items = agent_poll(cred, work["cursor"]).json()["items"]
    assert [(i["type"], i["payload"]) for i in items] == [("session.input",
                                                           {"data_b64": "bHMK"})]
    # output posted by the agent reaches a reader already waiting on the cursor API

    async def read_while_agent_posts():
        reader = AsyncClient()
        url = f"{base}/sessions/{sid}/output"
        first = await reader.get(url, {"wait": 0}, headers={"Authorization": f"Bearer {key}"})
        cursor = first.json()["cursor"]
        waiting = asyncio.create_task(reader.get(url, {"wait": 10, "cursor": cursor},
                                                 headers={"Authorization": f"Bearer {key}"}))
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        await asyncio.to_thread(post, Client(), "/api/agent/v1/events", {
            "boot_id": "b_1", "events": [{"seq": 2, "type": "session.output",
                                          "session_id": sid, "data_b64": "ZmlsZQo="}]}, cred)
        resp = await waiting
        return resp.json(), time.perf_counter() - t0

    page, latency = asyncio.run(read_while_agent_posts())
    assert page["items"] == [{"type": "output", "data_b64": "ZmlsZQo="}]
    assert latency < 1.0
    # a command: requested (audited with the user), then executed (audited with the result)
    run = post(c, f"{base}/sessions/{sid}/commands", {"command": "uname -a"}, token=key)
    wid = run.json()["work_id"]
    assert AuditEvent.objects.get(event="command.request").data["work_id"] == wid
    post(c, "/api/agent/v1/events", {"boot_id": "b_1", "events": [
        {"seq": 3, "type": "command.result", "work_id": wid, "session_id": sid,
         "command": "uname -a", "exit_code": 0, "duration_ms": 3,
         "stdout_b64": "TGludXgK", "stderr_b64": "", "truncated": False}]}, token=cred)
    results = c.get(f"{base}/sessions/{sid}/output", {},
                    HTTP_AUTHORIZATION=f"Bearer {key}").json()["items"]
    assert {"type": "command.result", "work_id": wid, "command": "uname -a", "exit_code": 0,
            "duration_ms": 3, "stdout_b64": "TGludXgK", "stderr_b64": "",
            "truncated": False} in results
    # closing: operator closes, agent is told, status is closed; further input is 409
    closed = post(c, f"{base}/sessions/{sid}/close", {}, token=key)
    assert closed.json()["status"] == "closed"
    assert any(i["type"] == "session.close" for i in agent_poll(cred).json()["items"])
    again = post(c, f"{base}/sessions/{sid}/input", {"data_b64": "eA=="}, token=key)
    assert again.status_code == 409


def test_work_for_a_session_survives_an_agent_reconnect_without_running_twice():
    """A poll's response is lost; the agent reconnects (no cursor, same boot): the same
    work ids come back, and an ack removes them for good."""
    ws, owner = make_workspace()
    agent = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.CONNECTED, owner)
    key = _key(ws, owner)
    for ch in (b"a", b"b"):
        post(Client(), f"/api/v1/workspaces/{ws.slug}/sessions/{s.public_id}/input",
             {"data_b64": base64.b64encode(ch).decode()}, token=key)
    lost = agent_poll(agent["credential"]).json()
    again = agent_poll(agent["credential"]).json()
    assert [i["id"] for i in lost["items"]] == [i["id"] for i in again["items"]]
    post(Client(), "/api/agent/v1/work/ack", {"ids": [i["id"] for i in again["items"]]},
         token=agent["credential"])
    assert agent_poll(agent["credential"]).json()["items"] == []


@override_settings(CMDOP_SESSION_OUTPUT_MAX_BYTES=64 * 1024)
def test_a_flood_stays_bounded_and_readers_see_the_drop():
    ws, owner = make_workspace()
    m = Machine.unscoped.create(workspace=ws, hostname="h", public_id="m_f",
                                enrollment="join_token")
    s = make_session(ws, m, Status.CONNECTED, owner)
    chunk = b"y\n" * 2048  # 4 KiB
    for _ in range(1000):  # ~4 MB through a 64 KiB buffer
        output.append_output(s.pk, chunk)
        assert output.held_bytes(s.pk) <= 64 * 1024
    from cmdop_server import redis_client

    # what Redis itself holds for the session (stream + bookkeeping), not just our counter
    assert redis_client.client().memory_usage(redis_client.key(f"out:{s.pk}")) < 3 * 64 * 1024
    page = asyncio.run(output.read(s.pk, None, 0))
    assert page.items[0]["type"] == "dropped"
    assert page.items[0]["dropped_bytes_total"] >= 1000 * len(chunk) - 64 * 1024
    kept = sum(len(base64.b64decode(i["data_b64"])) for i in page.items[1:])
    assert 0 < kept <= 64 * 1024
    # reading on from the returned cursor: no new marker, nothing repeated
    assert asyncio.run(output.read(s.pk, page.cursor, 0)).items == []
    # a single chunk bigger than the whole buffer keeps its newest bytes
    output.append_output(s.pk, b"x" * (100 * 1024) + b"END")
    assert output.held_bytes(s.pk) <= 64 * 1024


def test_output_cursor_validation():
    ws, owner = make_workspace()
    m = Machine.unscoped.create(workspace=ws, hostname="h", public_id="m_c",
                                enrollment="join_token")
    s = make_session(ws, m, Status.CONNECTED, owner)
    resp = Client().get(f"/api/v1/workspaces/{ws.slug}/sessions/{s.public_id}/output",
                        {"cursor": "garbage"}, HTTP_AUTHORIZATION=f"Bearer {_key(ws, owner)}")
    assert resp.status_code == 400
