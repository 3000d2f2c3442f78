"""The browser terminal's WebSocket as deployed: a client → our rendered nginx (TLS, the
terminal's Upgrade location) → the real control plane on gunicorn's unix socket. Output the
session holds reaches the socket, a keystroke becomes work for the session's machine, and
the attach is audited with the address nginx saw, not one the client claims."""

from __future__ import annotations

import pytest
from cmdop_server import output, redis_client, workqueue
from cmdop_server.audit.models import AuditEvent
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Status
from django.conf import settings
from django.test import Client

from tests.server_sessions.helpers import make_session, make_workspace
from tests.support.control_plane import until
from tests.support.nginx import Nginx, control_plane_behind_nginx
from tests.support.websocket import HandshakeRefused, TerminalSocket

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


@pytest.fixture(scope="module")
def web(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path_factory):
    with control_plane_behind_nginx(tls_pki, tmp_path_factory) as nginx:
        yield nginx


def _cookie(user) -> tuple[str, str]:
    client = Client()
    client.force_login(user)
    return settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value


def test_the_terminal_socket_through_nginx(web: Nginx) -> None:
    ws, owner = make_workspace()
    machine = Machine.unscoped.create(workspace=ws, hostname="web-1", public_id="m_ngx",
                                      enrollment="join_token")
    session = make_session(ws, machine, Status.CONNECTED, owner)
    output.append_output(session.pk, b"\x1b[01;32mgreen\x1b[0m prompt$ ")
    url = f"https://{web.domain}/w/{ws.slug}/sessions/{session.public_id}/terminal"
    sock = TerminalSocket(url, web.ca, _cookie(owner), connect_to=("127.0.0.1", web.https))
    first = sock.receive()
    assert first == {"type": "status", "status": "connected", "role": "operator"}
    assert sock.receive() == b"\x1b[01;32mgreen\x1b[0m prompt$ "  # colours pass as bytes
    sock.send_bytes(b"id\r")

    def typed():
        entries = redis_client.client().xrange(workqueue.stream_key(machine.pk))
        return [f for _, f in redis_client.stream_entries(entries)
                if f["type"] == "session.input"]
    assert until(typed, what="the keystrokes as work for the machine")
    attach = AuditEvent.objects.get(event="session.attach", data__session=session.public_id)
    assert attach.ip == "127.0.0.1" and attach.user_id == owner.pk  # the address nginx saw
    sock.close()
    with pytest.raises(HandshakeRefused, match="403"):
        TerminalSocket(url, web.ca, _cookie(owner), origin="https://evil.example",
                       connect_to=("127.0.0.1", web.https))
