"""The browser terminal on the deployed lab site (issue 17), through host1's real nginx and TLS
to gunicorn's asgi workers: the Owner signs in on the login page, opens a session on an
enrolled agent host and types over the terminal's WebSocket; the shell's answer comes back
on the same socket. The seed's refusals on the same path: no session cookie or another
site's Origin fail the handshake, a cookie that is no sign-in is closed 4401, input over the
site's byte rate is throttled, and a closed session ends the terminal (4000) and stays ended.

Runs before test_site_uninstall (file order), which takes the site away. Keystroke timings
are bench/terminal.py's business.
"""

from __future__ import annotations

import pytest
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.site import load_site

from tests.lab.helpers import lab_ssh
from tests.support.site_web import SIGN_IN_WAIT, RateLimited, SiteWeb, patiently
from tests.support.websocket import Closed, HandshakeRefused, TerminalSocket

pytestmark = pytest.mark.lab

WAIT = 60  # seconds any one awaited message may take on a busy lab host


class Screen:
    """One attached terminal: the bytes and the JSON records it received, in order."""

    def __init__(self, sock: TerminalSocket) -> None:
        self.sock, self.data, self.records = sock, bytearray(), []
        sock.sock.settimeout(WAIT)

    def until(self, done) -> None:
        while not done():
            message = self.sock.receive()
            if isinstance(message, bytes):
                self.data += message
            else:
                self.records.append(message)

    def record(self, **match) -> dict:
        found = [r for r in self.records if all(r.get(k) == v for k, v in match.items())]
        return found[0] if found else {}

    def closed_with(self) -> int:
        with pytest.raises(Closed) as closed:
            self.until(lambda: False)
        return closed.value.code


def test_the_browser_terminal_on_the_deployed_site(lab, site) -> None:
    config = load_site(site.dir)
    web = SiteWeb(lab.host("host1").ip, config, config["site"]["name"], site.ca)
    out = lab_ssh(lab, "host1", f"sudo {api_key_command(web.workspace, 'lab-terminal')}")
    assert out.returncode == 0, out.stderr
    key = parse_api_key(out.stdout)[1]
    machine = web.wait_online(key)[0]
    status, session = patiently(
        lambda: web.api(key, "POST", "/sessions", {"machine_id": machine["machine_id"]}))
    assert status == 201, session
    assert isinstance(session, dict)
    sid = session["session_id"]
    cookie = patiently(lambda: web.sign_in(site.secrets["owner_password"]),
                       at_least=SIGN_IN_WAIT)
    url = web.terminal_url(sid)

    def attach(cookie=cookie, origin=web.origin) -> Screen:
        def once() -> Screen:
            try:
                return Screen(TerminalSocket(url, site.ca, cookie, origin=origin,
                                             connect_to=(web.address, 443)))
            except HandshakeRefused as refused:  # nginx's session zone, shared with the API
                if " 429 " in refused.status_line + " ":
                    raise RateLimited(5) from None
                raise
        return patiently(once)

    # refused before the socket opens: no session cookie, or a page of another site
    with pytest.raises(HandshakeRefused, match=" 403"):
        attach(cookie=("other-cookie", "x"))
    with pytest.raises(HandshakeRefused, match=" 403"):
        attach(origin="https://evil.example")
    assert attach(cookie=("sessionid", "not-a-sign-in")).closed_with() == 4401

    # pending until the agent accepts, then connected: the shell answers on the same socket
    screen = attach()
    screen.until(lambda: screen.record(type="status", status="connected"))
    assert screen.record(type="status", status="connected")["role"] == "operator"
    screen.sock.send_bytes(b"echo lab-$((6*7))\r")
    screen.until(lambda: b"lab-42\r\n" in screen.data)

    # one paste over the site's input byte rate is refused whole (it never reaches the shell)
    budget = config["rate_limits"]["input_kb_per_minute"] * 1024
    screen.sock.send_bytes(b"x" * (budget + 1))
    screen.until(lambda: screen.record(type="throttled"))
    assert screen.record(type="throttled")["retry_after"] >= 1

    # closing ends the session: this terminal closes 4000, and the session stays ended
    screen.sock.send_json({"type": "close"})
    assert screen.closed_with() == 4000
    status, rows = patiently(lambda: web.api(key, "GET", "/sessions"))
    assert status == 200 and isinstance(rows, list), rows
    assert [s["status"] for s in rows if s["session_id"] == sid] == ["closed"]
    again = attach()
    assert again.closed_with() == 4000
    assert again.record(type="refused")["code"] == "session_not_active"
