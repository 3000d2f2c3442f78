"""A workspace's guests switch on every browser entry point, against the real control plane
(gunicorn's asgi worker over TLS): where the user API refuses a guest because the workspace
has guests disabled (api/auth.py), the dashboard's pages, their forms and the terminal's
WebSocket refuse the same guest with the same sentence; the guest's sessions and
memberships are untouched and count again once the owner turns guests back on."""

from __future__ import annotations

import http.client
import secrets
import ssl
from urllib.parse import urlencode

import pytest
from cmdop_server.identity import actions as identity_actions
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Status
from cmdop_server.sessions.terminal import CLOSE_REFUSED

from tests.server_sessions.helpers import (
    add_member,
    make_session,
    make_workspace,
    owner_membership,
)
from tests.server_sessions.test_terminal_socket import Screen, attach, cookie_for
from tests.support.control_plane import ApiError, ControlPlane, UserApi
from tests.support.websocket import Closed

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

REFUSED = "Guest access is disabled in this workspace."
# the app re-checks an open terminal every 2 s (sessions/terminal.py RECHECK_SECONDS): a
# close that has not come long after that is not coming
CLOSE_WAIT = 30


class Browser:
    """One signed-in person's browser on the real control plane: the session cookie, a CSRF
    cookie and token, and an Origin of the site on every form (Django's CSRF check is on)."""

    def __init__(self, cp: ControlPlane, user) -> None:
        self.cp, self.cookie, self.csrf = cp, cookie_for(user), secrets.token_hex(16)
        self.ctx = ssl.create_default_context(cafile=str(cp.pki.ca))

    def request(self, method: str, path: str, form: dict | None = None) -> tuple[int, str]:
        headers = {"Cookie": f"{self.cookie[0]}={self.cookie[1]}; csrftoken={self.csrf}"}
        body = None
        if form is not None:
            body = urlencode({**form, "csrfmiddlewaretoken": self.csrf})
            headers |= {"Origin": self.cp.url,
                        "Content-Type": "application/x-www-form-urlencoded"}
        conn = http.client.HTTPSConnection("localhost", self.cp.port, context=self.ctx,
                                           timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            return answer.status, answer.read().decode(errors="replace")
        finally:
            conn.close()


def _set_guests(ws, owner, enabled: bool) -> None:
    identity_actions.do_update_workspace(owner_membership(ws, owner), {"guests_enabled": enabled})


def _entry_points(ws, machine, sid: str) -> list[tuple[str, str, dict | None]]:
    """Every browser path that takes a workspace: its pages and the forms they post."""
    base = f"/w/{ws.slug}"
    return [("GET", f"{base}/machines/", None),
            ("POST", f"{base}/machines/", {"name": "t", "ttl": 600, "usage_limit": 1}),
            ("GET", f"{base}/sessions/", None),
            ("POST", f"{base}/sessions/", {"machine_id": machine.public_id}),
            ("GET", f"{base}/sessions/{sid}/", None),
            ("POST", f"{base}/sessions/{sid}/", {"user_id": "1", "role": "observer"}),
            ("GET", f"{base}/audit/", None),
            ("GET", f"{base}/audit/?export=jsonl", None),
            ("POST", "/keys/", {"workspace": ws.slug, "name": "k"})]


def test_every_page_and_form_refuses_a_guest_where_guests_are_disabled(control_plane) -> None:
    ws, owner = make_workspace()
    machine = Machine.unscoped.create(workspace=ws, hostname="web-1", public_id="m_guest",
                                      enrollment="join_token")
    guest, member = add_member(ws, "guest"), add_member(ws, "member")
    s = make_session(ws, machine, Status.CONNECTED, owner, observers=[guest, member])
    as_guest, as_member = Browser(control_plane, guest), Browser(control_plane, member)
    _, guest_key = identity_actions.do_create_api_key(owner_membership(ws, guest), "g")
    api = UserApi(control_plane.url, control_plane.pki.ca, guest_key, ws.slug)

    with pytest.raises(ApiError) as refused:
        api.call("GET", "/machines")
    assert (refused.value.status, refused.value.body["detail"]) == (403, REFUSED)  # to match
    for method, path, form in _entry_points(ws, machine, s.public_id):
        status, page = as_guest.request(method, path, form)
        assert (status, REFUSED in page) == (403, True), (method, path, status, page[:300])
        status, page = as_member.request(method, path, form)  # the rule is for guests only
        assert REFUSED not in page and "CSRF" not in page, (method, path, status, page[:300])
    status, home = as_guest.request("GET", "/")
    assert status == 200 and REFUSED in home and f"/w/{ws.slug}/sessions/" not in home

    _set_guests(ws, owner, True)
    for path in (f"/w/{ws.slug}/machines/", f"/w/{ws.slug}/sessions/",
                 f"/w/{ws.slug}/sessions/{s.public_id}/"):
        status, page = as_guest.request("GET", path)
        assert status == 200 and REFUSED not in page, (path, page[:300])
    assert [m["hostname"] for m in api.call("GET", "/machines")] == ["web-1"]
    status, page = as_guest.request("GET", f"/w/{ws.slug}/audit/")  # read-only: the role table
    assert status == 403 and REFUSED not in page


@pytest.fixture
def agent(control_plane, real_agent):
    a = real_agent(control_plane)
    a.start()
    return a


def test_the_terminal_refuses_a_guest_where_guests_are_disabled(agent) -> None:
    """A guest watching a session loses the open terminal within seconds of the owner turning
    guests off, and a new attach is refused the same way; on again, the guest attaches."""
    _set_guests(agent.ws, agent.owner, True)
    guest = add_member(agent.ws, "guest")
    sid, _ = agent.open_session()
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": guest.pk, "role": "observer"})
    watching = attach(agent, guest, sid)
    watching.until(lambda: watching.record(type="status"))
    assert watching.record(type="status")["role"] == "observer"

    _set_guests(agent.ws, agent.owner, False)
    with pytest.raises(Closed) as closed:
        watching.until(lambda: False, timeout=CLOSE_WAIT)
    assert closed.value.code == CLOSE_REFUSED
    assert watching.record(type="refused")["detail"] == REFUSED
    again = attach(agent, guest, sid)
    with pytest.raises(Closed) as closed:
        again.until(lambda: False, timeout=CLOSE_WAIT)
    assert closed.value.code == CLOSE_REFUSED
    assert again.record(type="refused")["detail"] == REFUSED
    assert agent.session(sid).status == Status.CONNECTED  # the session itself goes on

    _set_guests(agent.ws, agent.owner, True)
    back: Screen = attach(agent, guest, sid)
    back.until(lambda: back.record(type="status"))
    assert back.record(type="status")["role"] == "observer"
    back.sock.close()
