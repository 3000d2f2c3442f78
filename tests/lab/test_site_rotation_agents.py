"""`cmdop-install rotate SITE agent_credentials` on the deployed lab site (conftest ``site``).

Every lab agent moves to a new machine credential while a terminal session on one of them
stays open: the same agent processes (boot ids) stay online, each credential file is
replaced (0600, the agent's user), the session answers after the rotation as before, the
old credential is refused through nginx and its replay is in the workspace's audit log next
to one handover row per agent. ``--finish`` lapses nobody and status reports nothing to
fix. Runs after test_site_rotation (file order) and before uninstall; leaves the site
healthy on the new credentials.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time

import pytest
from cmdop_install.lab import network
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.site import load_site
from cmdop_install.site_api import SiteApi

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import cli, fleet, lab_ssh, manage

pytestmark = pytest.mark.lab

CREDENTIAL = "/var/lib/cmdop-agent/credential.json"


def _credential(lab, host: str) -> tuple[str, str]:
    """The agent's machine credential (kept in this process, never printed) and the file's
    mode and owner."""
    out = lab_ssh(lab, host, f"sudo stat -c '%a %U' {CREDENTIAL} && sudo cat {CREDENTIAL}")
    assert out.returncode == 0, out.stderr
    mode_owner, _, body = out.stdout.partition("\n")
    return json.loads(body)["credential"], mode_owner


def _call(lab, site, token: str, method: str, path: str, body: dict | None = None
          ) -> tuple[int, bytes]:
    """One request to the site's nginx on host1 with ``token``: the status and the body."""
    ctx = ssl.create_default_context(cafile=str(site.ca))
    ctx.check_hostname = False  # the certificate names the domain; we dial the IP
    conn = http.client.HTTPSConnection(lab.host("host1").ip, 443, context=ctx, timeout=30)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Host": load_site(site.dir)["site"]["domain"],
                              "Content-Type": "application/json",
                              "Authorization": f"Bearer {token}"})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


class Terminal:
    """One terminal session on an agent, kept open across the rotation."""

    def __init__(self, api: SiteApi, machine_id: str) -> None:
        self.api = api
        self.session = api.call("POST", "/sessions", {"machine_id": machine_id})["session_id"]
        self.cursor = ""
        self._wait(lambda: self._status() == "connected", "the session to connect")

    def _status(self) -> str | None:
        mine = [s for s in self.api.call("GET", "/sessions") if s["session_id"] == self.session]
        return mine[0]["status"] if mine else None

    def _wait(self, done, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def echo(self, marker: str) -> None:
        """Type ``echo`` of an arithmetic the shell must work out; wait for its answer."""
        line = f"echo {marker}-$((6*7))\n".encode()
        self.api.call("POST", f"/sessions/{self.session}/input",
                      {"data_b64": base64.b64encode(line).decode()})
        seen = b""

        def answered() -> bool:
            nonlocal seen
            query = "?wait=5" + (f"&cursor={self.cursor}" if self.cursor else "")
            page = self.api.call("GET", f"/sessions/{self.session}/output{query}")
            self.cursor = page["cursor"]
            seen += b"".join(base64.b64decode(i["data_b64"]) for i in page["items"]
                             if i["type"] == "output")
            return f"{marker}-42".encode() in seen

        self._wait(answered, f"{marker}-42 in the session's output")

    def close(self) -> None:
        self.api.call("POST", f"/sessions/{self.session}/close", {})


def test_every_agent_moves_to_a_new_credential_without_going_offline(lab, site) -> None:
    config = load_site(site.dir)
    workspace = config["site"]["name"]
    key = parse_api_key(manage(lab, api_key_command(workspace, "lab-agent-credentials")))[1]
    api = SiteApi(lab.host("host1").ip, config["site"]["domain"], site.ca, key, workspace)
    before = fleet(lab, site.dir)
    assert all(before[h]["online"] and before[h]["credential"] == "current"
               for h in AGENT_HOSTS), before
    old = {h: _credential(lab, h) for h in AGENT_HOSTS}
    machines = api.wait_online(AGENT_HOSTS)
    terminal = Terminal(api, machines[AGENT_HOSTS[0]]["machine_id"])
    terminal.echo("before")

    rotated = cli("rotate", str(site.dir), "agent_credentials", "--yes")
    assert "agent credentials: " in rotated.stdout, rotated.stdout
    # rotate names each agent that is not on its new credential yet: none of the lab's
    assert not [line for line in rotated.stdout.splitlines()
                if line.strip().split(":")[0] in AGENT_HOSTS], rotated.stdout

    after = fleet(lab, site.dir)
    for host in AGENT_HOSTS:
        credential, mode_owner = _credential(lab, host)
        assert credential != old[host][0] and credential.startswith("mc_")
        assert mode_owner == old[host][1] and mode_owner.startswith("600 "), mode_owner
        # the same agent process (no restart, no second enrollment), online throughout
        assert after[host]["boot_id"] == before[host]["boot_id"], host
        assert after[host]["online"] and after[host]["credential"] == "current", after[host]
    terminal.echo("after")  # the session opened before the rotation still answers

    replayed = AGENT_HOSTS[0]
    status, _ = _call(lab, site, old[replayed][0], "POST", "/api/agent/v1/heartbeat",
                      {"version": "0.1.0", "boot_id": "b_lab_replay"})
    assert status == 401
    status, body = _call(lab, site, key, "GET", f"/api/v1/workspaces/{workspace}/audit/export")
    assert status == 200, body[:200]
    rows = [json.loads(line) for line in body.splitlines()]
    handed = {r["data"]["machine"] for r in rows if r["event"] == "machine.credential.handover"}
    assert {machines[h]["machine_id"] for h in AGENT_HOSTS} <= handed, handed
    replays = [r for r in rows if r["event"] == "auth.machine" and not r["success"]
               and r["reason"] == "superseded_machine_credential"]
    assert replays and replays[-1]["data"]["machine"] == machines[replayed]["machine_id"]
    assert replays[-1]["ip"] == network.gateway(lab.subnet)  # this machine, as nginx saw it

    finished = cli("rotate", str(site.dir), "--finish", "--yes")
    assert not [line for line in finished.stdout.splitlines()
                if line.strip().split(":")[0] in AGENT_HOSTS], finished.stdout
    assert json.loads((site.dir / "rotation.json").read_text())["rotation"] is None
    terminal.echo("finished")
    terminal.close()
    quiet = cli("status", str(site.dir), "--quiet", check=False)
    assert "LAPSED" not in quiet.stdout and "OFFLINE" not in quiet.stdout, quiet.stdout
