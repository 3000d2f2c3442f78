"""Centrifugo, our side: tokens carry the claims Centrifugo reads (REFERENCE.md §1), a
subscription token is minted only for a participant's session channel and grants no
publishing; publishes go to POST /api/publish with X-API-Key, only after commit; without
Centrifugo everything answers and nothing is sent."""

from __future__ import annotations

import http.server
import json
import threading
import time

import jwt
import pytest
from cmdop_server import realtime
from django.db import transaction
from django.test import Client, override_settings

SECRET = "s" * 48
CF = {"hmac_secret": SECRET, "token_ttl": 600, "audience": "centrifugo", "issuer": "cmdop"}


def _decode(token: str) -> dict:
    return jwt.decode(token, SECRET, algorithms=["HS256"], audience="centrifugo",
                      issuer="cmdop")


@pytest.mark.unit
@override_settings(CMDOP_CENTRIFUGO=CF)
def test_connection_token_claims():
    claims = _decode(realtime.connection_token(42))
    assert claims["sub"] == "42" and isinstance(claims["sub"], str)
    assert 590 <= claims["exp"] - time.time() <= 600 and claims["jti"]
    assert "channels" not in claims and "subs" not in claims  # no server-side subscriptions


@pytest.mark.unit
@override_settings(CMDOP_CENTRIFUGO=CF)
def test_subscription_token_claims():
    claims = _decode(realtime.subscription_token(42, "s_abc"))
    assert claims["sub"] == "42" and claims["channel"] == "session:s_abc"
    # nothing in a subscription token can grant publishing (Centrifugo has no such claim;
    # the namespace forbids client publishes) and no override widens the channel options
    assert "override" not in claims and "allow_publish" not in json.dumps(claims)


@pytest.mark.unit
@override_settings(CMDOP_CENTRIFUGO={})
def test_absent_centrifugo_means_no_tokens_and_no_publish():
    assert realtime.connection_token(1) is None
    assert realtime.subscription_token(1, "s_x") is None
    assert realtime.publish("session:s_x", {"a": 1}) is False


class _FakeCentrifugo(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeCentrifugo.received.append((self.path, self.headers["X-API-Key"], body))
        reply = b"{}" if self.headers["X-API-Key"] == "apikey" else \
            b'{"error":{"code":401,"message":"unauthorized"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_centrifugo():
    _FakeCentrifugo.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeCentrifugo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


@pytest.mark.unit
def test_publish_uses_the_http_api_shape(fake_centrifugo):
    with override_settings(CMDOP_CENTRIFUGO=CF | {"api_url": fake_centrifugo,
                                                  "api_key": "apikey"}):
        assert realtime.publish("session:s_1", {"type": "output"}) is True
    with override_settings(CMDOP_CENTRIFUGO=CF | {"api_url": fake_centrifugo,
                                                  "api_key": "wrong"}):
        assert realtime.publish("session:s_1", {"type": "output"}) is False
    path, key, body = _FakeCentrifugo.received[0]
    assert path == "/api/publish" and key == "apikey"
    assert body == {"channel": "session:s_1", "data": {"type": "output"}}


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"], transaction=True)
def test_publish_happens_only_after_commit(fake_centrifugo):
    with override_settings(CMDOP_CENTRIFUGO=CF | {"api_url": fake_centrifugo,
                                                  "api_key": "apikey"}):
        with transaction.atomic():
            realtime.publish_on_commit("session:s_1", {"n": 1})
            assert _FakeCentrifugo.received == []
        assert len(_FakeCentrifugo.received) == 1
        with pytest.raises(RuntimeError), transaction.atomic():
            realtime.publish_on_commit("session:s_1", {"n": 2})
            raise RuntimeError("rolled back")
        assert len(_FakeCentrifugo.received) == 1


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"])
def test_tokens_endpoint_is_for_participants_only():
    from cmdop_server.identity import actions as identity_actions
    from cmdop_server.machines.models import Machine
    from cmdop_server.sessions.models import Status

    from tests.server_sessions.helpers import (
        add_member,
        make_session,
        make_workspace,
        owner_membership,
    )

    ws, owner = make_workspace()
    m = Machine.unscoped.create(workspace=ws, hostname="h", public_id="m_r",
                                enrollment="join_token")
    observer, outsider = add_member(ws), add_member(ws)
    s = make_session(ws, m, Status.CONNECTED, owner, observers=[observer])
    url = f"/api/v1/workspaces/{ws.slug}/sessions/{s.public_id}/realtime"

    def call(user):
        raw = identity_actions.do_create_api_key(owner_membership(ws, user), "k")[1]
        return Client().get(url, HTTP_AUTHORIZATION=f"Bearer {raw}")

    with override_settings(CMDOP_CENTRIFUGO=CF):
        body = call(observer).json()
        assert body["enabled"] and _decode(body["subscription_token"])["channel"] == \
            f"session:{s.public_id}"
        assert _decode(body["subscription_token"])["sub"] == str(observer.pk)
        assert call(outsider).status_code == 403
    with override_settings(CMDOP_CENTRIFUGO={}):
        assert call(observer).json() == {"enabled": False}


@pytest.mark.integration
@pytest.mark.django_db(databases=["default", "audit"], transaction=True)
def test_agent_output_is_published_once_per_batch_after_commit(fake_centrifugo):
    from cmdop_server.machines.models import Machine
    from cmdop_server.sessions.models import Status

    from tests.server_sessions.helpers import enroll, make_session, make_workspace, post

    ws, owner = make_workspace()
    agent = enroll(ws, owner)
    m = Machine.objects.in_workspace(ws).get()
    s = make_session(ws, m, Status.CONNECTED, owner)
    events = [{"seq": i, "type": "session.output", "session_id": s.public_id,
               "data_b64": b} for i, b in ((1, "YWI="), (2, "Y2Q="), (3, "ZQ=="))]
    with override_settings(CMDOP_CENTRIFUGO=CF | {"api_url": fake_centrifugo,
                                                  "api_key": "apikey"}):
        resp = post(Client(), "/api/agent/v1/events", {"boot_id": "b", "events": events},
                    token=agent["credential"])
    assert resp.json() == {"accepted_through": 3}
    (published,) = [b for _, _, b in _FakeCentrifugo.received]
    assert published == {"channel": f"session:{s.public_id}",
                         "data": {"type": "output", "data_b64": "YWJjZGU="}}
