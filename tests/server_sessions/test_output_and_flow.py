"""A session end to end through the real endpoints (user API ⇄ Redis ⇄ agent API), and the
bounded output buffer: a flood keeps Redis memory bounded and readers see a drop marker."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from cmdop_server import output, workqueue
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions as identity_actions
from cmdop_server.machines.models import AgentBoot, Machine
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
from tests.support.control_plane import until
from tests.support.services import RedisServer

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
    # output posted by the agent reaches a reader already waiting on the cursor API: woken,
    # not found by the read at the end of its wait (at least 20 s: a fifth of 25 is cut)
    session_pk = Session.objects.in_workspace(ws).get().pk

    async def read_while_agent_posts():
        reader = AsyncClient()
        url = f"{base}/sessions/{sid}/output"
        first = await reader.get(url, {"wait": 0}, headers={"Authorization": f"Bearer {key}"})
        cursor = first.json()["cursor"]
        waiting = asyncio.create_task(reader.get(url, {"wait": 25, "cursor": cursor},
                                                 headers={"Authorization": f"Bearer {key}"}))
        hub = workqueue._hub(output.WAKE_CHANNEL)
        deadline = time.monotonic() + 30
        while not hub.waiters.get(session_pk):
            assert time.monotonic() < deadline, "the reader never waited"
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        await asyncio.to_thread(post, Client(), "/api/agent/v1/events", {
            "boot_id": "b_1", "events": [{"seq": 2, "type": "session.output",
                                          "session_id": sid, "data_b64": "ZmlsZQo="}]}, cred)
        resp = await waiting
        return resp.json(), time.perf_counter() - t0

    page, latency = asyncio.run(read_while_agent_posts())
    assert page["items"] == [{"type": "output", "data_b64": "ZmlsZQo="}]
    assert latency < 10, latency
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


@pytest.fixture
def own_redis(settings):
    """A Redis of this test's own (so it can be killed), in place of the shared one."""
    from cmdop_server import redis_client

    with RedisServer() as redis:
        settings.CMDOP_REDIS = {"host": redis.host, "port": redis.port}
        redis_client.client.cache_clear()
        yield redis
    redis_client.client.cache_clear()


def _output_and_result(sid: str, work_id: str) -> list[dict]:
    return [{"seq": 1, "type": "session.output", "session_id": sid, "data_b64": "b25jZQo="},
            {"seq": 2, "type": "command.result", "work_id": work_id, "session_id": sid,
             "command": "true", "exit_code": 0, "duration_ms": 1, "stdout_b64": "",
             "stderr_b64": "", "truncated": False}]


def _buffered(session_pk: int) -> list[dict]:
    return asyncio.run(output.read(session_pk, None, 0)).items


def test_events_are_refused_not_lost_while_redis_is_down(own_redis):
    """The batch is refused as a whole (503, nothing stored, nothing audited) while the
    output buffer cannot take it, so the agent's retry after Redis is back delivers it."""
    ws, owner = make_workspace()
    agent = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.CONNECTED, owner)
    batch = {"boot_id": "b_r", "events": _output_and_result(s.public_id, "w_r1")}
    own_redis.kill()
    refused = post(Client(), "/api/agent/v1/events", batch, token=agent["credential"])
    assert refused.status_code == 503
    assert not AgentBoot.objects.filter(machine=m, boot_id="b_r", accepted_through__gt=0)
    assert not AuditEvent.objects.filter(event="command.executed").exists()
    own_redis.start()  # back, empty, as after a crash
    for _ in range(2):  # the retry, and a retry of that (its reply lost): stored once
        taken = post(Client(), "/api/agent/v1/events", batch, token=agent["credential"])
        assert taken.json() == {"accepted_through": 2}
    items = _buffered(s.pk)
    assert [i["type"] for i in items] == ["output", "command.result"]
    assert AuditEvent.objects.filter(event="command.executed").count() == 1


def test_a_batch_whose_commit_failed_is_not_buffered_twice(monkeypatch):
    """The buffer takes a batch before the database commits it; if the commit fails, the
    agent sends the batch again and the buffer does not take it a second time."""
    from cmdop_server.sessions import actions as session_actions
    from django.db import OperationalError

    ws, owner = make_workspace()
    agent = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.CONNECTED, owner)
    batch = {"boot_id": "b_c", "events": _output_and_result(s.public_id, "w_c1")}
    buffered = session_actions._Effects.append_to_buffers

    def then_the_database_fails(self):
        buffered(self)
        raise OperationalError("the database went away at commit time")

    monkeypatch.setattr(session_actions._Effects, "append_to_buffers", then_the_database_fails)
    failed = post(Client(), "/api/agent/v1/events", batch, token=agent["credential"])
    assert failed.status_code >= 500
    assert not AuditEvent.objects.filter(event="command.executed").exists()
    monkeypatch.undo()
    taken = post(Client(), "/api/agent/v1/events", batch, token=agent["credential"])
    assert taken.json() == {"accepted_through": 2}
    assert [i["type"] for i in _buffered(s.pk)] == ["output", "command.result"]
    assert AuditEvent.objects.filter(event="command.executed").count() == 1


def test_a_parked_poll_sees_work_sent_as_redis_comes_back(own_redis):
    """Redis restarts under a waiting long-poll and work is sent at once: whether the wake
    subscription was re-made by us or by redis-py's own reconnect, the poll returns the
    work, long before its 25 s wait is over."""
    from cmdop_server import redis_client, workqueue

    ws, owner = make_workspace()
    m = Machine.unscoped.create(workspace=ws, hostname="h", public_id="m_rr",
                                enrollment="join_token")
    channel = redis_client.key(workqueue.WAKE_CHANNEL)

    def subscribed() -> bool:
        return redis_client.client().pubsub_numsub(channel)[0][1] > 0

    async def scenario():
        poll = asyncio.create_task(workqueue.wait_for_work(m.pk, None, 25))
        await asyncio.to_thread(until, subscribed, 10, "the wake subscription")
        await asyncio.to_thread(own_redis.kill)
        # an outage within redis-py's own retrying (10 attempts, up to ~5 s): it re-makes
        # the subscription itself, after the work below was published to nobody
        await asyncio.sleep(1.0)
        await asyncio.to_thread(own_redis.start)
        sent = await asyncio.to_thread(workqueue.enqueue, m.pk, "session.input",
                                       {"data_b64": "eA=="}, "s_x")
        batch = await asyncio.wait_for(poll, 12)
        return sent, batch

    sent, batch = asyncio.run(scenario())
    assert [i["id"] for i in batch.items] == [sent]


class _Reads:
    """A ``read`` for ``wait_until``: empty, then the scripted outcomes, one per call."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self):
        from cmdop_server.workqueue import Batch

        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else []
        if isinstance(outcome, Exception):
            raise outcome
        return Batch(outcome, "c")


def test_a_wake_that_meets_redis_going_away_keeps_the_poll_parked():
    """The re-read after a wake fails (Redis died as the wake was delivered): the poll does
    not fail, it waits for the next wake (the resubscription) and returns what that finds."""
    import redis.exceptions
    from cmdop_server import workqueue

    reads = _Reads([], redis.exceptions.ConnectionError("refused"), [{"id": "w_1"}])

    async def scenario():
        poll = asyncio.create_task(workqueue.wait_until("wake-test", 7, reads, 20))
        for expected_calls in (2, 3):
            while reads.calls < expected_calls - 1:
                await asyncio.sleep(0.01)
            # wait until the listener is subscribed, then wake key 7
            await asyncio.to_thread(until, lambda: _numsub("wake-test") > 0, 10, "subscription")
            await asyncio.to_thread(workqueue.wake, "wake-test", 7)
            await asyncio.to_thread(until, lambda c=expected_calls: reads.calls >= c, 10,
                                    f"read {expected_calls}")
        return await asyncio.wait_for(poll, 10)

    batch = asyncio.run(scenario())
    assert batch.items == [{"id": "w_1"}]
    assert reads.calls == 3


def test_a_poll_that_nothing_wakes_reads_once():
    """An idle poll (most of a fleet's): one read when it comes in, and at its end the
    answer that read gave, not a second read (a Redis round trip per poll)."""
    from cmdop_server import workqueue

    reads = _Reads()

    async def scenario():
        # the worker's subscription is made first, as in a running worker: its confirmation
        # wakes every poll then parked to re-read (here the first one's second read)
        first = _Reads()
        parked = asyncio.create_task(workqueue.wait_until("wake-test", 10, first, 20))
        await asyncio.to_thread(until, lambda: first.calls >= 2, 10, "the subscription")
        batch = await asyncio.wait_for(workqueue.wait_until("wake-test", 9, reads, 0.3), 10)
        parked.cancel()
        return batch

    batch = asyncio.run(scenario())
    assert batch.items == []
    assert reads.calls == 1


def test_a_poll_whose_first_read_fails_fails_at_once():
    """Fail fast: Redis down when the poll comes in is the caller's 503, not a 25 s hang."""
    import redis.exceptions
    from cmdop_server import workqueue

    reads = _Reads(redis.exceptions.ConnectionError("refused"))
    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(asyncio.wait_for(workqueue.wait_until("wake-test", 8, reads, 20), 5))
    assert reads.calls == 1


def _numsub(channel: str) -> int:
    from cmdop_server import redis_client

    return redis_client.client().pubsub_numsub(redis_client.key(channel))[0][1]
