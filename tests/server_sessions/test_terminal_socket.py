"""The browser terminal's WebSocket against the real control plane (gunicorn's asgi worker
over TLS) and the real agent: authorized on attach by the session cookie, an Origin of the
site and the three session checks; re-checked every few seconds while open."""

from __future__ import annotations

import os
import time

import pytest
from cmdop_server import ratelimit
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity.models import Membership
from cmdop_server.sessions.models import Status
from django.conf import settings
from django.test import Client

from tests.server_sessions.helpers import add_member
from tests.support.control_plane import ControlPlane, until
from tests.support.websocket import Closed, HandshakeRefused, TerminalSocket

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


def cookie_for(user) -> tuple[str, str]:
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return name, client.cookies[name].value


class Screen:
    """What one attached terminal received: bytes, and the JSON records in order."""

    def __init__(self, sock: TerminalSocket) -> None:
        self.sock, self.data, self.records = sock, bytearray(), []

    def until(self, done, timeout: float = 20) -> None:
        self.sock.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {bytes(self.data[-300:])!r} "
                                     f"{self.records[-3:]}")
            message = self.sock.receive()
            if isinstance(message, bytes):
                self.data += message
            else:
                self.records.append(message)

    def wait_for(self, needle: bytes, timeout: float = 20) -> None:
        self.until(lambda: needle in self.data, timeout)

    def record(self, **match) -> dict:
        found = [r for r in self.records if all(r.get(k) == v for k, v in match.items())]
        return found[0] if found else {}


@pytest.fixture
def agent(control_plane, real_agent):
    a = real_agent(control_plane)
    a.start()
    return a


def attach(agent, user, sid: str, **kw) -> Screen:
    url = f"{agent.server}/w/{agent.ws.slug}/sessions/{sid}/terminal"
    return Screen(TerminalSocket(url, agent.ca, cookie_for(user), **kw))


def test_keystrokes_reach_the_shell_and_its_output_comes_back(agent) -> None:
    sid, _ = agent.open_session()
    screen = attach(agent, agent.owner, sid)
    screen.until(lambda: screen.record(type="status"))
    assert screen.record(type="status") == {"type": "status", "status": "connected",
                                            "role": "operator"}
    for key in b"echo $((6*7))\r":
        screen.sock.send_bytes(bytes([key]))
    screen.wait_for(b"42\r\n")
    screen.sock.send_bytes(b"sleep 100\r")
    time.sleep(0.5)
    screen.sock.send_bytes(b"\x03")  # Ctrl-C
    screen.sock.send_bytes(b"echo after-$((1+1))\r")
    screen.wait_for(b"after-2")
    screen.sock.send_json({"type": "resize", "cols": 117, "rows": 41})
    screen.sock.send_bytes(b"stty size\r")
    screen.wait_for(b"41 117")
    screen.sock.close()
    # reopening shows the output so far (from the oldest the buffer holds)
    again = attach(agent, agent.owner, sid)
    again.wait_for(b"after-2")


def test_a_thousand_keystrokes_are_one_session_operation(agent) -> None:
    """Attaching is one operation; keystrokes count bytes, not operations."""
    sid, _ = agent.open_session()
    screen = attach(agent, agent.owner, sid)
    screen.until(lambda: screen.record(type="status"))
    used = ratelimit.hit("session", f"user:{agent.owner.pk}", amount=1)
    for _ in range(1000):
        screen.sock.send_bytes(b" ")
    screen.sock.send_bytes(b"\x15echo typed-$((500+500))\r")
    screen.wait_for(b"typed-1000")
    assert not screen.record(type="throttled")
    after = ratelimit.hit("session", f"user:{agent.owner.pk}", amount=1)
    assert used.allowed and after.allowed
    key = ratelimit._window("session", f"user:{agent.owner.pk}", None)[1]
    from cmdop_server import redis_client
    # the attach and the two probes above: nothing per keystroke
    assert int(redis_client.client().get(key) or 0) <= 3 + 1  # a window may have turned


def test_an_observer_cannot_type_and_the_refusal_is_audited(agent) -> None:
    observer = add_member(agent.ws)
    sid, _ = agent.open_session()
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": observer.pk, "role": "observer"})
    watching = attach(agent, observer, sid)
    watching.until(lambda: watching.record(type="status"))
    assert watching.record(type="status")["role"] == "observer"
    watching.sock.send_bytes(b"touch /tmp/observer-was-here-$((3*3))\r")
    watching.until(lambda: watching.record(type="refused"))
    assert watching.record(type="refused")["code"] == "read_only"
    agent.api.type(sid, b"echo operator-$((2*2))\r")
    watching.wait_for(b"operator-4")  # everyone attached sees the same live output
    assert b"observer-was-here" not in watching.data
    until(lambda: AuditEvent.objects.filter(event="session.access", success=False,
                                            data__session=sid,
                                            data__permission="send_input").exists(),
          what="the observer's refusal audited")


def test_a_removed_member_loses_the_open_terminal(agent) -> None:
    member = add_member(agent.ws)
    sid, _ = agent.open_session()
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": member.pk, "role": "operator"})
    screen = attach(agent, member, sid)
    screen.until(lambda: screen.record(type="status"))
    Membership.unscoped.filter(workspace=agent.ws, user=member).delete()
    started = time.monotonic()
    with pytest.raises(Closed) as closed:
        screen.until(lambda: False, timeout=15)
    assert closed.value.code == 4403
    assert time.monotonic() - started < 10


def test_the_terminal_ends_when_the_session_closes(agent) -> None:
    sid, _ = agent.open_session()
    screen = attach(agent, agent.owner, sid)
    screen.until(lambda: screen.record(type="status"))
    screen.sock.send_json({"type": "close"})
    with pytest.raises(Closed) as closed:
        screen.until(lambda: False, timeout=15)
    assert closed.value.code == 4000
    assert agent.session(sid).status == Status.CLOSED


def test_the_terminal_ends_when_the_shell_exits(agent) -> None:
    sid, _ = agent.open_session()
    screen = attach(agent, agent.owner, sid)
    screen.until(lambda: screen.record(type="status"))
    screen.sock.send_bytes(b"exit 3\r")
    with pytest.raises(Closed) as closed:
        screen.until(lambda: False, timeout=20)
    assert closed.value.code == 4000
    assert agent.session(sid).status == Status.CLOSED


def test_a_pending_session_opens_without_a_reload(agent) -> None:
    sid = agent.api.open_session(agent.machine.public_id)
    screen = attach(agent, agent.owner, sid)
    screen.until(lambda: screen.record(type="status", status="connected"))
    assert screen.records[0]["status"] in ("pending", "connected")


def test_the_handshake_needs_the_cookie_and_our_origin(agent) -> None:
    sid, _ = agent.open_session()
    url = f"{agent.server}/w/{agent.ws.slug}/sessions/{sid}/terminal"
    with pytest.raises(HandshakeRefused, match="403"):
        TerminalSocket(url, agent.ca, cookie_for(agent.owner), origin="https://evil.example")
    with pytest.raises(HandshakeRefused, match="403"):
        TerminalSocket(url, agent.ca, ("other-cookie", "x"))
    signed_out = Screen(TerminalSocket(url, agent.ca,
                                       (settings.SESSION_COOKIE_NAME, "not-a-session")))
    with pytest.raises(Closed) as closed:
        signed_out.until(lambda: False, timeout=10)
    assert closed.value.code == 4401
    stranger = add_member(agent.ws)  # a member, but no participant of the session
    screen = attach(agent, stranger, sid)
    with pytest.raises(Closed) as closed:
        screen.until(lambda: False, timeout=10)
    assert closed.value.code == 4403
    assert screen.record(type="refused")["code"] == "forbidden"


def test_an_idle_terminal_ends_its_session_audited(tls_pki, django_db_setup,
                                                    django_db_modify_db_settings, tmp_path,
                                                    real_agent) -> None:
    """A control plane of its own with a 3 s idle timeout (site.toml's [sessions])."""
    (tmp_path / "idle_settings.py").write_text(
        "from cmdop_server.settings.test import *  # noqa: F403\n"
        "CMDOP_SESSION_IDLE_TIMEOUT = 3\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path),
                                                       os.environ.get("PYTHONPATH")]))}
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log", settings="idle_settings",
                      env=env) as cp:
        agent = real_agent(cp)
        agent.start()
        sid, _ = agent.open_session()
        screen = attach(agent, agent.owner, sid)
        screen.sock.send_bytes(b"echo typed\r")
        with pytest.raises(Closed) as closed:
            screen.until(lambda: False, timeout=20)
        assert closed.value.code == 4000
        assert screen.record(type="refused")["code"] == "idle_timeout"
        assert agent.session(sid).status == Status.CLOSED
        assert AuditEvent.objects.filter(event="session.idle_timeout",
                                         data__session=sid).exists()
