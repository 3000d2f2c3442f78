"""Issue 12 items 1 and 5 through the deployed site: host1's real nginx, gunicorn's asgi
workers on their unix socket, Postgres and Redis; clients on other lab hosts.

- Client addresses: one lab host exhausting its sign-in limit does not limit another, a
  client-forged X-Forwarded-For changes nothing, and the audit rows name each host.
- Postgres connections: after 1,000 mixed requests and a reconnect storm of the agents, the
  app's login role holds no more connections than the configured bound, and no request
  failed. The figures (before, peak, after) are printed for the report.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import shlex
import ssl
import subprocess
import threading
import time
import tomllib

import pytest
from cmdop_install.lab import core
from cmdop_install.manage import api_key_command, fleet_status_command, parse_api_key, parse_fleet
from cmdop_install.site import load_site

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import lab_ssh, manage

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

CONCURRENCY = 16
REQUESTS = 1000


def _start_device_from(lab, site, host: str, forged: list[str]) -> list[int]:
    url = load_site(site.dir)["site"]["public_url"]
    command = (f"sudo python3 -c {shlex.quote(_CLIENT)} {shlex.quote(url)} "
               f"{shlex.quote(json.dumps(forged))}")
    out = lab_ssh(lab, host, command)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _whole_window_left() -> None:
    """The app counts per UTC minute: start with at least half of one left (three ssh
    round trips to lab hosts on a loaded machine)."""
    into = time.time() % 60
    if into > 30:
        time.sleep(60 - into + 0.5)


@pytest.fixture(scope="module")
def owner_key(lab, site) -> str:
    """An API key of the site's first owner (its administrator), made on host1."""
    workspace = load_site(site.dir)["site"]["name"]
    return parse_api_key(manage(lab, api_key_command(workspace, "lab-security")))[1]


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


# --- 5. Postgres connections -----------------------------------------------------------------

# the test's own management commands log in as the app too (with a pool of their own on a
# pooled site): they name themselves, and are not counted as the control plane's
PROBE = "cmdop-lab-probe"


def _app_connections(lab) -> int:
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE usename IN ('cmdop_blue', "
           "'cmdop_green') AND application_name <> 'cmdop-lab-probe'")  # PROBE
    out = lab_ssh(lab, "host1", f"sudo -u postgres psql -tAc {shlex.quote(sql)}")
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def _boots(lab, workspace: str) -> dict[str, str]:
    """Each agent machine's current boot, as its heartbeats reported it."""
    command = fleet_status_command(workspace)
    assert command.startswith("systemd-run "), command
    # libpq reads the connections' application_name from PGAPPNAME
    named = command.replace("systemd-run ", f"systemd-run -E PGAPPNAME={PROBE} ", 1)
    fleet = parse_fleet(manage(lab, named))
    return {name: row.get("boot_id", "") for name, row in fleet.items()}


def test_connections_stay_bounded_after_a_burst_and_a_reconnect_storm(lab, site,
                                                                       owner_key) -> None:
    workers = load_site(site.dir)["control_plane"]["workers"]
    conf = lab_ssh(lab, "host1", "sudo cat /etc/cmdop/server.toml")
    assert conf.returncode == 0, conf.stderr
    database = tomllib.loads(conf.stdout)["database"]
    pool_max = int(database.get("pool_max_size", 0))
    if pool_max:  # each worker keeps one pool per database (app and audit)
        bound = in_flight_bound = workers * pool_max * 2
    else:  # at rest only the long-poll lookup threads keep theirs, per worker and database
        bound = workers * int(database.get("pool_threads", 4)) * 2
        # in flight, each request's thread may hold one connection per database besides
        in_flight_bound = bound + 2 * CONCURRENCY
    api = Site(lab, site, owner_key)
    before = _app_connections(lab)

    # the agents reconnect at once after an outage: the control plane restarts under them,
    # and every agent restarts too (a new boot: enroll-free reconnect, heartbeat, polls)
    boots = _boots(lab, api.workspace)
    # a restart waits for the old workers' graceful stop (graceful_timeout 30 s: parked polls,
    # open terminals) and the new ones' start, which on a busy machine passes lab_ssh's 60 s
    restarted = subprocess.run(core.ssh_argv(lab, "host1", "sudo systemctl restart cmdop-server"),
                               capture_output=True, text=True, timeout=240, check=False)
    assert restarted.returncode == 0, restarted.stderr
    deadline = time.monotonic() + 60
    while api.call("GET", "/healthz")[0] != 200:  # the restart itself is not the burst
        assert time.monotonic() < deadline, "the control plane did not come back"
        time.sleep(0.5)
    restarts = [subprocess.Popen(core.ssh_argv(lab, name, "sudo systemctl restart cmdop-agent"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for name in AGENT_HOSTS]

    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _app_connections(lab))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def one(i: int) -> int:
        paths = [("GET", "/api/v1/me", None),
                 ("GET", f"/api/v1/workspaces/{api.workspace}/machines", None),
                 ("GET", f"/api/v1/workspaces/{api.workspace}/members", None),
                 ("POST", f"/api/v1/workspaces/{api.workspace}/join-tokens",
                  {"name": f"burst{i}", "ttl_seconds": 60})]
        method, path, body = paths[i % len(paths)]
        return api.call(method, path, body)[0]

    try:
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            statuses = list(pool.map(one, range(REQUESTS)))
        for proc in restarts:
            assert proc.wait(timeout=120) == 0
        deadline = time.monotonic() + 120
        while True:  # every agent is back: a new boot reported by its heartbeat
            now = _boots(lab, api.workspace)
            if all(now.get(h) and now.get(h) != boots.get(h) for h in boots):
                break
            assert time.monotonic() < deadline, f"agents did not come back: {now}"
            time.sleep(2)
    finally:
        done.set()
        sampler.join(timeout=30)
    # the last requests' threads close theirs as they finish: give them a bounded while
    deadline = time.monotonic() + 60
    while (after := _app_connections(lab)) > bound and time.monotonic() < deadline:
        time.sleep(1)
    print(json.dumps({"app_connections_before": before, "peak_during_burst": peak[0],
                      "after": after, "bound_at_rest": bound, "requests": REQUESTS,
                      "concurrency": CONCURRENCY}))
    failed = {s: statuses.count(s) for s in set(statuses) if s >= 400}
    assert not failed, f"requests failed: {failed}"
    assert after <= bound
    assert peak[0] <= in_flight_bound


# --- 3. text the database cannot store --------------------------------------------------------

def test_a_nul_in_a_field_is_a_400_naming_it_through_the_deployed_site(lab, site,
                                                                         owner_key) -> None:
    api = Site(lab, site, owner_key)
    path = f"/api/v1/workspaces/{api.workspace}/api-keys"
    status, body = api.call("POST", path, {"name": "a\u0000b"})
    assert status == 400, body
    assert "name" in json.loads(body)["detail"], body
    status, body = api.call("POST", f"/api/v1/workspaces/{api.workspace}/sessions",
                            {"machine_id": "m_\u0000x"})
    assert status == 400, body
    assert "machine_id" in json.loads(body)["detail"], body
