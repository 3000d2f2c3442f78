"""``cmdop``'s terminal WebSocket as deployed: cmdop's own RFC 6455 client (the agent
package's websocket module, opened by ``Session.terminal_socket``) → our rendered nginx (TLS,
the terminal's Upgrade location) → the real control plane on gunicorn's unix socket, whose
database and Redis the real agent's control plane (the session fixture's) shares: two
control-plane nodes of one site. The bearer credential (an API key or a device-flow access
token) is checked on attach and again every 2 s; an API key acts in its own workspace only;
refused credentials and attaches count against the rate limits.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from cmdop_agent.client.settings import Settings
from cmdop_agent.client.userapi import Session, UserApi
from cmdop_agent.websocket import Closed, WebSocket
from cmdop_server import credentials, ratelimit
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions as identity_actions
from cmdop_server.identity.models import ApiKey
from django.conf import settings

from tests.server_sessions.helpers import add_member, make_workspace, owner_membership
from tests.server_sessions.real_agent import RealAgent
from tests.support.nginx import Nginx, control_plane_behind_nginx

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

# the app's check runs every 2 s (sessions/terminal.py RECHECK_SECONDS): a close that has
# not come long after that is not coming
CLOSE_WAIT = 30


@pytest.fixture(scope="module")
def web(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path_factory):
    with control_plane_behind_nginx(tls_pki, tmp_path_factory) as nginx:
        yield nginx


@pytest.fixture
def agent(control_plane, real_agent, web: Nginx, monkeypatch):
    """The real agent; cmdop in this process resolves the site's name to nginx on loopback
    (what an /etc/hosts line does on a person's machine)."""
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real(
        "127.0.0.1" if host == web.domain else host, *a, **k))
    a = real_agent(control_plane)
    a.start()
    a.web = web
    return a


def cmdop_session(agent, key: str, sid: str, slug: str | None = None) -> Session:
    web = agent.web
    settings = Settings(f"https://{web.domain}:{web.https}", web.ca, key,
                        slug or agent.ws.slug, agent.root / "cmdop-home")
    return Session(UserApi(settings, None), sid)


class Screen:
    """What cmdop's socket received: terminal bytes, and the JSON records in order."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws, self.data, self.records = ws, bytearray(), []

    def until(self, done, timeout: float = 30) -> None:
        """Read until ``done()``; a socket silent for ``timeout`` fails the test."""
        self.ws.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {bytes(self.data[-300:])!r} "
                                     f"{self.records[-3:]}")
            message = self.ws.receive()
            if isinstance(message, bytes):
                self.data += message
            else:
                self.records.append(json.loads(message))

    def closed(self, timeout: float = CLOSE_WAIT) -> Closed:
        with pytest.raises(Closed) as raised:
            self.until(lambda: False, timeout)
        return raised.value

    def record(self, **match) -> dict:
        found = [r for r in self.records if all(r.get(k) == v for k, v in match.items())]
        return found[0] if found else {}


def attached(agent: RealAgent, key: str, sid: str, slug: str | None = None) -> Screen:
    ws = cmdop_session(agent, key, sid, slug).terminal_socket()
    assert ws is not None, "the control plane refused the bearer's handshake (403)"
    return Screen(ws)


def test_cmdop_types_and_reads_its_echo_through_nginx(agent: RealAgent) -> None:
    sid, _ = agent.open_session()
    screen = attached(agent, agent.key, sid)
    screen.until(lambda: screen.record(type="status"))
    assert screen.record(type="status") == {"type": "status", "status": "connected",
                                            "role": "operator"}
    for key in b"echo $((6*7))\r":
        screen.ws.send_binary(bytes([key]))
    screen.until(lambda: b"42\r\n" in screen.data)
    screen.ws.send_json({"type": "resize", "cols": 117, "rows": 41})
    screen.ws.send_binary(b"stty size\r")
    screen.until(lambda: b"41 117" in screen.data)
    attach = AuditEvent.objects.get(event="session.attach", data__session=sid)
    assert attach.ip == "127.0.0.1" and attach.user_id == agent.owner.pk  # nginx's address
    screen.ws.send_binary(b"exit 5\r")
    assert screen.closed().code == 4000
    assert screen.record(type="status", status="closed")["exit_code"] == 5


def test_a_revoked_api_key_closes_the_open_socket(agent: RealAgent) -> None:
    sid, _ = agent.open_session()
    member, member_api = agent.member("member")
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": member.pk, "role": "operator"})
    screen = attached(agent, member_api.key, sid)
    screen.until(lambda: screen.record(type="status"))
    key = ApiKey.unscoped.get(user=member)
    identity_actions.do_revoke_api_key(owner_membership(agent.ws, member), key.pk)
    closed = screen.closed()
    assert closed.code == 4401
    assert screen.record(type="refused")["detail"] == "The API key was revoked."
    assert AuditEvent.objects.filter(event="auth.bearer", success=False,
                                     reason="revoked_api_key").exists()
    again = attached(agent, member_api.key, sid)  # a new attach with it: the same answer
    assert again.closed().code == 4401
    assert agent.session(sid).status == "connected"  # the session itself goes on


def test_an_api_key_opens_no_terminal_in_another_workspace(agent: RealAgent) -> None:
    """The key's owner is an owner of a second workspace too; the key is bound to the first.
    A guest's key, where guests are off, is refused as the user API refuses it."""
    sid, _ = agent.open_session()
    other, _ = make_workspace(owner=agent.owner)
    elsewhere = attached(agent, agent.key, sid, slug=other.slug)
    assert elsewhere.closed().code == 4403
    assert elsewhere.record(type="refused")["code"] == "not_found"
    stranger_ws, stranger = make_workspace()
    _, stranger_key = identity_actions.do_create_api_key(
        owner_membership(stranger_ws, stranger), "s")
    foreign = attached(agent, stranger_key, sid)  # a key of a workspace that is not this one
    assert foreign.closed().code == 4403
    assert foreign.record(type="refused")["code"] == "not_found"
    guest = add_member(agent.ws, "guest")  # guests are off in this workspace, as in the API
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": guest.pk, "role": "observer"})
    _, guest_key = identity_actions.do_create_api_key(owner_membership(agent.ws, guest), "g")
    refused = attached(agent, guest_key, sid)
    assert refused.closed().code == 4403
    assert refused.record(type="refused")["detail"] == \
        "Guest access is disabled in this workspace."


def spend(scope: str, subject: str) -> None:
    """Use up ``subject``'s ``scope`` in this minute's window and the next (fixed windows:
    the attach that follows may land in either)."""
    limit, _ = ratelimit.parse_rate(settings.CMDOP_RATE_LIMITS[scope])
    for now in (time.time(), time.time() + 60):
        ratelimit.hit(scope, subject, now=now, amount=limit)


def test_attaching_and_refused_keys_count_against_the_rate_limits(agent: RealAgent) -> None:
    sid, _ = agent.open_session()
    member = add_member(agent.ws)
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": member.pk, "role": "operator"})
    _, member_key = identity_actions.do_create_api_key(owner_membership(agent.ws, member), "m")
    spend("session", f"user:{member.pk}")
    spent = attached(agent, member_key, sid)
    assert spent.closed().code == 4403
    assert spent.record(type="throttled")["retry_after"] > 0

    bad = credentials.new_api_key(settings.CMDOP_API_KEY_PREFIX)  # well-formed, unknown
    refused = attached(agent, bad, sid)
    assert refused.closed().code == 4401
    assert AuditEvent.objects.filter(event="auth.bearer", success=False, ip="127.0.0.1",
                                     reason="unknown_api_key").exists()
    spend("auth", "ip:127.0.0.1")  # this address's failures
    throttled = attached(agent, bad, sid)
    assert throttled.closed().code == 4403
    assert throttled.record(type="throttled")
    # a good key from the same address is not an auth failure: it still attaches
    fine = attached(agent, agent.key, sid)
    fine.until(lambda: fine.record(type="status"))
    assert fine.record(type="status")["role"] == "operator"
    # nor can the open socket guess tokens past the limit: a refused renewal counts too
    fine.ws.send_json({"type": "credential", "token": "cmd_at_" + "g" * 43})
    fine.until(lambda: fine.record(type="throttled"))
    assert fine.record(type="throttled")["detail"] == "Too many refused credentials."
    assert not fine.record(type="refused")


def test_a_login_token_renews_on_the_open_socket(agent: RealAgent) -> None:
    """A device-flow access token attaches; a refreshed token of the same user replaces it
    (the old one's revocation then changes nothing); another user's is refused; revoking
    the current one closes the socket."""
    sid, _ = agent.open_session()
    member = add_member(agent.ws)
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": member.pk, "role": "operator"})
    first, second = grant(member), grant(member)
    screen = attached(agent, first.access_token, sid)
    screen.until(lambda: screen.record(type="status"))
    screen.ws.send_json({"type": "credential", "token": grant(agent.owner).access_token})
    screen.until(lambda: screen.record(type="refused", code="bad_credential"))
    assert AuditEvent.objects.filter(event="auth.bearer", success=False, ip="127.0.0.1",
                                     reason="another_user").exists()
    screen.ws.send_json({"type": "credential", "token": second.access_token})
    screen.ws.send_binary(b"echo renewed-$((2+2))\r")  # after the renewal, in order
    screen.until(lambda: b"renewed-4" in screen.data)
    identity_actions.do_revoke_token(first.access_token)
    # the next recheck, with the renewed token, sees the changed role and stays open
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": member.pk, "role": "observer"})
    screen.until(lambda: screen.record(type="status", role="observer"))
    identity_actions.do_revoke_token(second.access_token)
    assert screen.closed().code == 4401
    assert screen.record(type="refused", code="unauthorized")["detail"] == "The login was revoked."


def grant(user):
    """A device-flow login of ``user`` (the cmdop client's), approved on their behalf."""
    start = identity_actions.do_start_device_authorization("cmdop-cli", "api", "test", None,
                                                           "test")
    assert identity_actions.do_decide_device(user, start.user_code, True, None)
    return identity_actions.do_poll_device_token(start.device_code, "cmdop-cli", None)
