"""A machine credential speaks for its own sessions only (issue 12.7): events naming another
machine's session are refused whole, through the real control plane (gunicorn asgi over
TLS, Postgres, Redis) — the victim session gets no output, no status change, no audit row
in its name; the refusal itself is audited."""

from __future__ import annotations

import base64

import pytest
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions
from cmdop_server.identity.models import Membership
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Session, Status

from tests.server_sessions.helpers import enroll, make_session, make_workspace
from tests.support.control_plane import ApiError, SessionOutput, UserApi

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


def _host(control_plane, slug: str) -> dict:
    """A workspace with one enrolled machine, a connected session on it, the owner's API."""
    ws, owner = make_workspace(slug=slug)
    _, key = actions.do_create_api_key(Membership.objects.in_workspace(ws).get(user=owner), "k")
    enrolled = enroll(ws, owner)
    machine = Machine.objects.in_workspace(ws).get(public_id=enrolled["machine_id"])
    session = make_session(ws, machine, Status.CONNECTED, owner)
    agent = UserApi(control_plane.url, control_plane.pki.ca, enrolled["credential"], "")
    agent.base = "/api/agent/v1"
    return {"ws": ws, "session": session, "agent": agent,
            "user": UserApi(control_plane.url, control_plane.pki.ca, key, ws.slug)}


def _events(seq: int, session_id: str) -> list[dict]:
    return [
        {"seq": seq, "type": "session.output", "session_id": session_id,
         "data_b64": base64.b64encode(b"rm -rf / # typed by nobody\r\n").decode()},
        {"seq": seq + 1, "type": "command.result", "session_id": session_id, "work_id": "w_x",
         "command": "id", "exit_code": 0, "stdout_b64": "", "stderr_b64": ""},
        {"seq": seq + 2, "type": "session.exited", "session_id": session_id, "exit_code": 0},
    ]


@pytest.mark.parametrize("same_workspace", [False, True])
def test_a_machine_cannot_write_into_another_machines_session(control_plane, same_workspace):
    mine = _host(control_plane, "mine")
    victim = mine if same_workspace else _host(control_plane, "victim")
    if same_workspace:  # a second machine of the same workspace holds the victim session
        owner = Membership.objects.in_workspace(mine["ws"]).get().user
        other = Machine.objects.in_workspace(mine["ws"]).get(
            public_id=enroll(mine["ws"], owner)["machine_id"])
        victim = {**mine, "session": make_session(mine["ws"], other, Status.CONNECTED, owner)}
    target = victim["session"].public_id
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0

    with pytest.raises(ApiError) as refused:
        mine["agent"].call("POST", "/events", {"boot_id": "b1", "events": _events(1, target)})
    assert refused.value.status == 403 and refused.value.body["error"] == "forbidden"
    # one foreign session in a batch refuses the batch: its own events are not taken either
    with pytest.raises(ApiError):
        mine["agent"].call("POST", "/events", {"boot_id": "b1", "events": [
            *_events(1, mine["session"].public_id)[:1], *_events(2, target)[:1]]})

    assert Session.unscoped.get(pk=victim["session"].pk).status == Status.CONNECTED
    out = SessionOutput(victim["user"], target)
    assert out.read(wait=0) == 0 and out.data == b"" and out.records == []
    rows = list(AuditEvent.objects.filter(id__gt=before).order_by("id"))
    assert [(r.event, r.success, r.reason) for r in rows] == [
        ("agent.events", False, "foreign_session")] * 2
    assert rows[0].data["sessions"] == [target]

    # its own session is still its own: the same events for it are taken
    own = mine["session"].public_id
    assert mine["agent"].call("POST", "/events", {
        "boot_id": "b1", "events": _events(1, own)})["accepted_through"] == 3
    assert Session.unscoped.get(pk=mine["session"].pk).status == Status.CLOSED


def _agent_tokens(user) -> dict:
    """The tokens a device-flow enrolled agent keeps on its machine (client cmdop-agent,
    scope agent)."""
    from cmdop_server.identity.models import DeviceAuthorization
    from django.test import Client
    from django.utils import timezone

    from tests.server.helpers import poll, start_device

    client = Client()
    start = start_device(client, "cmdop-agent", scope="agent")
    assert actions.do_decide_device(user, start["user_code"], True, "127.0.0.1")
    DeviceAuthorization.objects.update(last_polled_at=None, created_at=timezone.now())
    resp = poll(client, start["device_code"], "cmdop-agent")
    assert resp.status_code == 200, resp.content
    return resp.json()


def test_what_an_agent_holds_is_no_way_into_the_user_api(control_plane):
    mine = _host(control_plane, "holder")
    owner = Membership.objects.in_workspace(mine["ws"]).get().user
    agent_token = _agent_tokens(owner)["access_token"]
    for credential in (mine["agent"].key, agent_token):
        as_user = UserApi(control_plane.url, control_plane.pki.ca, credential, mine["ws"].slug)
        for method, path in (("GET", "/sessions"), ("GET", "/audit/export"),
                             ("POST", "/api-keys")):
            with pytest.raises(ApiError) as refused:
                as_user.call(method, path, {"name": "x"} if method == "POST" else None)
            assert refused.value.status == 401, (credential[:6], path)
        as_user.close()
    assert mine["user"].call("GET", "/sessions") is not None  # the owner's own key works
