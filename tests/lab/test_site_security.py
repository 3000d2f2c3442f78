"""Issue 12 item 1 through the deployed site: host1's real nginx, gunicorn's asgi workers on
their unix socket, Postgres and Redis; clients on other lab hosts. One lab host exhausting
its sign-in limit does not limit another, a client-forged X-Forwarded-For changes nothing,
and the audit rows name each host (the site-wide export of the site's administrator)."""

from __future__ import annotations

import http.client
import json
import shlex
import ssl
import time

import pytest
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.site import load_site

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import lab_ssh

pytestmark = pytest.mark.lab

# asks nginx from a lab host: POST device_authorization once per entry of argv[2] (a JSON
# list of forged X-Forwarded-For values, "" for none); prints the statuses as JSON
_CLIENT = """
import json, ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(cafile="/etc/cmdop-agent/ca.crt")
statuses = []
for forged in json.loads(sys.argv[2]):
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if forged:
        headers["X-Forwarded-For"] = forged
    request = urllib.request.Request(sys.argv[1] + "/api/v1/oauth/device_authorization",
                                     data=b"client_id=cmdop-cli", headers=headers)
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=20) as answer:
            statuses.append(answer.status)
    except urllib.error.HTTPError as refused:
        statuses.append(refused.code)
print(json.dumps(statuses))
"""


def _start_device_from(lab, site, host: str, forged: list[str]) -> list[int]:
    url = load_site(site.dir)["site"]["public_url"]
    command = (f"sudo python3 -c {shlex.quote(_CLIENT)} {shlex.quote(url)} "
               f"{shlex.quote(json.dumps(forged))}")
    out = lab_ssh(lab, host, command)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _whole_window_left() -> None:
    """The app counts per UTC minute: start with most of one left."""
    into = time.time() % 60
    if into > 35:
        time.sleep(60 - into + 0.5)


def _manage(lab, command: str) -> str:
    out = lab_ssh(lab, "host1", f"sudo {command}")
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def owner_key(lab, site) -> str:
    """An API key of the site's first owner (its administrator), made on host1."""
    workspace = load_site(site.dir)["site"]["name"]
    return parse_api_key(_manage(lab, api_key_command(workspace, "lab-security")))[1]


class Site:
    """The deployed site's API from this machine, through host1's nginx."""

    def __init__(self, lab, site, key: str) -> None:
        self.ip = lab.host("host1").ip
        self.domain = load_site(site.dir)["site"]["domain"]
        self.workspace = load_site(site.dir)["site"]["name"]
        self.ctx = ssl.create_default_context(cafile=str(site.ca))
        self.ctx.check_hostname = False  # the certificate names the domain; we dial the IP
        self.key = key

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(self.ip, 443, context=self.ctx, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Host": self.domain, "Authorization": f"Bearer {self.key}",
                                  "Content-Type": "application/json"})
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()


# --- 1. client addresses ---------------------------------------------------------------------

def test_one_host_exhausting_its_limit_does_not_limit_another(lab, site, owner_key) -> None:
    first, second = AGENT_HOSTS[0], AGENT_HOSTS[1]
    _whole_window_left()
    assert _start_device_from(lab, site, first, [""] * 10) == [200] * 10
    # exhausted; a forged header (the other host's address, or any) does not get it out
    forged = [lab.host(second).ip, "198.51.100.7", f"198.51.100.8, {lab.host(second).ip}"]
    assert _start_device_from(lab, site, first, ["", *forged]) == [429] * 4
    # the other host sent nothing this minute: not limited, even claiming to be the first
    assert _start_device_from(lab, site, second, ["", lab.host(first).ip]) == [200] * 2

    status, body = Site(lab, site, owner_key).call("GET", "/api/v1/audit/export")
    assert status == 200, body
    starts = [json.loads(line) for line in body.splitlines()]
    starts = [row for row in starts if row["event"] == "auth.device.start"]
    addresses = {row["ip"] for row in starts}
    assert {lab.host(first).ip, lab.host(second).ip} <= addresses
    assert None not in addresses and "" not in addresses
    assert not addresses & {"198.51.100.7", "198.51.100.8"}  # never a client's own header
