"""The seed's "session operations 100/min" counts operations (opening, joining, closing,
resizing, commands), not an attached terminal's keystrokes or output reads; keystrokes are
bounded by a byte rate instead. Two minutes of typing run on a clock the test controls
(``ratelimit.clock``), against the real Redis and the user API as cmdop connect calls it."""

from __future__ import annotations

import base64

import pytest
from cmdop_server import ratelimit
from cmdop_server.identity import actions as identity_actions
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Status
from django.test import Client

from tests.server_sessions.helpers import (
    enroll,
    get,
    make_session,
    make_workspace,
    owner_membership,
    post,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0 + 0.5  # just after a minute starts: windows are known

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ratelimit, "clock", fake)
    return fake


def _operator():
    ws, owner = make_workspace()
    key = identity_actions.do_create_api_key(owner_membership(ws, owner), "k")[1]
    machine = enroll(ws, owner)
    return ws, owner, key, Machine.unscoped.get(public_id=machine["machine_id"])


def test_ten_keys_a_second_for_two_minutes_never_meets_a_limit(clock) -> None:
    ws, owner, key, machine = _operator()
    session = make_session(ws, machine, Status.CONNECTED, owner)
    base = f"/api/v1/workspaces/{ws.slug}/sessions/{session.public_id}"
    client = Client()
    codes = set()
    cursor = ""
    for n in range(1200):  # 10 keys/s x 120 s, each key one request as cmdop connect sends it
        clock.now += 0.1
        key_b64 = base64.b64encode(b"abcdefghij"[n % 10:n % 10 + 1]).decode()
        codes.add(post(client, f"{base}/input", {"data_b64": key_b64}, key).status_code)
        if n % 5 == 0:  # and the output reads in between
            page = get(client, f"{base}/output", key, wait=0, **({"cursor": cursor}
                                                                  if cursor else {}))
            codes.add(page.status_code)
            cursor = page.json()["cursor"]
    assert codes == {200, 202}


def test_the_101st_session_open_in_a_minute_is_refused(clock) -> None:
    ws, owner, key, machine = _operator()
    client = Client()
    url = f"/api/v1/workspaces/{ws.slug}/sessions"
    codes = []
    for _ in range(101):
        clock.now += 0.5  # 101 opens in 50.5 s: one window
        codes.append(post(client, url, {"machine_id": machine.public_id}, key).status_code)
    assert codes == [201] * 100 + [429]
    refused = post(client, url, {"machine_id": machine.public_id}, key)
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 60
    clock.now += 60  # the next minute opens again
    assert post(client, url, {"machine_id": machine.public_id}, key).status_code == 201


def test_a_paste_over_the_byte_rate_is_refused(clock, settings) -> None:
    settings.CMDOP_RATE_LIMITS = settings.CMDOP_RATE_LIMITS | {"input_bytes": "4096/min"}
    ws, owner, key, machine = _operator()
    session = make_session(ws, machine, Status.CONNECTED, owner)
    url = f"/api/v1/workspaces/{ws.slug}/sessions/{session.public_id}/input"
    chunk = base64.b64encode(b"x" * 3000).decode()
    assert post(Client(), url, {"data_b64": chunk}, key).status_code == 202
    assert post(Client(), url, {"data_b64": chunk}, key).status_code == 429
