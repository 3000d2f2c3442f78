"""A whole site onto the lab's air-gapped host from the signed offline bundle alone (issue 16).

air1 sits on the lab's --internal network (no way out, DNS 127.0.0.1). Postgres, Redis,
nginx and the control plane go onto it with `deploy --bundle`, then its agent with
`agents rollout --bundle`; the agent comes online and a session runs a command through the
control plane. Two counters in this machine's raw PREROUTING chain see every IPv4 packet
air1's bridge delivers: toward the air-gapped subnet itself (it must tick) and toward any
other address (it must stay at zero, and it does tick when air1 tries to get out; air1 gets
a default route to this machine meanwhile, so that an attempt is a packet, not a local error).
Tampered bundles are refused before any host is touched: test_bundle_refused.py.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.site import load_site

from tests.lab.helpers import (
    AirCounters,
    bundle_site,
    cli,
    counting_air,
    lab_ssh,
    try_to_get_out,
)

pytestmark = pytest.mark.lab

HOST = "air1"


@pytest.fixture(scope="module")
def air_site(lab, offline_bundle, tmp_path_factory) -> Path:
    """A single-node site on air1 trusting the bundle's key, its agent not yet installed."""
    return bundle_site(lab, HOST, [], tmp_path_factory.mktemp("airsite"), offline_bundle[1])


def _on_air1(lab, command: str) -> str:
    out = lab_ssh(lab, HOST, command)
    assert out.returncode == 0, out.stderr
    return out.stdout


class Api:
    """The control plane on air1 through its nginx, from this machine."""

    def __init__(self, lab, site: Path) -> None:
        config = load_site(site)
        self.ip, self.domain = lab.host(HOST).ip, config["site"]["domain"]
        self.base = f"/api/v1/workspaces/{config['site']['name']}"
        self.ctx = ssl.create_default_context(cafile=str(site / "pki" / "ca.crt"))
        self.ctx.check_hostname = False  # the certificate names the domain; we dial the IP
        command = api_key_command(config["site"]["name"], "lab-airgapped")
        self.key = parse_api_key(_on_air1(lab, f"sudo {command}"))[1]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        conn = http.client.HTTPSConnection(self.ip, 443, context=self.ctx, timeout=60)
        try:
            conn.request(method, self.base + path,
                         body=json.dumps(body) if body is not None else None,
                         headers={"Host": self.domain, "Authorization": f"Bearer {self.key}",
                                  "Content-Type": "application/json"})
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        assert answer.status in (200, 201, 202), (method, path, answer.status, data)
        return json.loads(data)


def _echo_through_a_session(api: Api) -> str:
    """air1's output after a session on its agent typed a command whose answer we compute."""
    (machine,) = api.call("GET", "/machines")
    session = api.call("POST", "/sessions", {"machine_id": machine["machine_id"]})["session_id"]
    until = time.monotonic() + 60
    # the caller's session list: asking the session itself counts against the session limit
    while next(s["status"] for s in api.call("GET", "/sessions")
               if s["session_id"] == session) == "pending":
        assert time.monotonic() < until, "the agent never opened the session"
        time.sleep(0.5)
    typed = base64.b64encode(b"echo air''gapped-$((6*7))\n").decode()
    api.call("POST", f"/sessions/{session}/input", {"data_b64": typed})
    seen, cursor, until = "", "", time.monotonic() + 90
    while "airgapped-42" not in seen and time.monotonic() < until:
        page = api.call("GET", f"/sessions/{session}/output?wait=20"
                               + (f"&cursor={cursor}" if cursor else ""))
        cursor = page["cursor"]
        seen += "".join(base64.b64decode(i["data_b64"]).decode(errors="replace")
                        for i in page["items"] if "data_b64" in i)
    return seen


@pytest.fixture
def counters(lab) -> Iterator[AirCounters]:
    with counting_air(lab, HOST) as counted:
        yield counted


def test_a_site_and_its_agent_install_from_the_bundle_and_nothing_leaves_the_subnet(
        lab, offline_bundle, air_site, counters) -> None:
    bundle, _ = offline_bundle
    assert counters.packets() == {"inside": 0, "outside": 0}
    assert _on_air1(lab, "ip -6 route show default") == "", "air1 must have no IPv6 way out"

    deployed = cli("deploy", str(air_site), "--bundle", str(bundle), check=False)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    inventory = air_site / "inventory.py"
    text = inventory.read_text()
    assert text.count("\nagents = [\n]") == 1
    inventory.write_text(text.replace("\nagents = [\n]", "\nagents = [_CONTROL]"))
    rolled = cli("agents", "rollout", str(air_site), "--bundle", str(bundle), check=False)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert any(line.startswith(HOST) and "installed" in line
               for line in rolled.stdout.splitlines()), rolled.stdout
    assert rolled.stdout.rstrip().endswith("every agent runs it and is online"), rolled.stdout
    assert "airgapped-42" in _echo_through_a_session(Api(lab, air_site))

    counted = counters.packets()
    assert counted["inside"] > 0, "the counters must see air1's own traffic"
    assert counted["outside"] == 0, counted
    # apt read the verified bundle's source alone, never the host's own sources or lists
    history = _on_air1(lab, "sudo cat /var/log/apt/history.log")
    installs = [line for line in history.splitlines() if line.startswith("Commandline:")]
    assert installs, history
    for line in installs:
        assert "-o Dir::Etc::sourceparts=- " in line, line
        assert "-o Dir::Etc::sourcelist=/var/lib/cmdop-install/bundle/" in line, line
    assert _on_air1(lab, "sudo find /var/lib/apt/lists -type f ! -name lock") == ""

    # and the outside counter does see an attempt to get out
    tried = try_to_get_out(lab, HOST)
    assert tried.returncode != 0
    assert counters.packets()["outside"] > 0
