"""bench/fleet.py --site DIR: the fleet bench against a deployed site (e.g. a lab's), through
its control-plane host's nginx over TLS, from this machine.

Traffic goes only to the site's first control-plane host (its address from the site's
inventory: a lab address for a lab site). Per run, with an API key of the site's Owner
issued on that host (bench/deployed.py) and revoked after:

- ``max(levels)`` machines enrolled with one join token (usage limit the count), each under
  a host name of this run (they stay in the workspace: run it on a site for benches);
- per level, N simulated agents in one asyncio process keep one keep-alive TLS connection
  each doing ``GET /api/agent/v1/work?wait=25&cursor=…`` as cmdop-agent does, connecting
  over ``--ramp`` seconds;
- work: ``--sessions`` agents heartbeat once and get a session opened by the user API (the
  agent answers session.open with session.opened and acks, as cmdop-agent does, without a
  PTY); then for ``--seconds`` the user API types one key ``--rate`` times a second into
  one of them whose agent is parked (``POST …/input``: the session endpoint enqueues it),
  and enqueue → agent received is measured from the item's ``created`` stamp (the lab's
  hosts share this machine's clock; on other hosts it holds only as far as the clocks
  agree);
- alongside, a process of its own calls ``GET /api/v1/me`` with the API key ``--api-rate``
  times a second on a keep-alive connection (the session list the loopback bench uses is in
  nginx's session zone, 100 a minute per address);
- the control-plane host's CPU and memory per process name, read there over SSH
  (/proc/<pid>/stat and status: per process, so a container's figures are its own) at the
  start and the end of the window.

    .venv/bin/python bench/fleet.py --site DIR [--levels 1000,2000,5000 --seconds 30
                                                --ramp 25 --rate 20 --api-rate 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import http.client
import json
import multiprocessing
import os
import random
import resource
import socket
import ssl
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmdop_install.runner import read_facts  # noqa: E402

from bench.fleet import _pct, _read_response  # noqa: E402

MAX_AGENTS = 10000
# on the control-plane host: utime+stime ticks, RSS (kB) and count of processes by name,
# and the host's clock
_USAGE = r"""
import json, os, time
usage = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    rss = next((int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:")), 0)
    ticks, kb, n = usage.get(name, (0, 0, 0))
    usage[name] = (ticks + int(fields[11]) + int(fields[12]), kb + rss, n + 1)
print(json.dumps({"at": time.time(), "hz": os.sysconf("SC_CLK_TCK"), "usage": usage}))
"""


def _connect(address: str, port: int, domain: str, ctx: ssl.SSLContext,
             timeout: float = 60) -> http.client.HTTPSConnection:
    """A keep-alive connection to ``address`` that speaks TLS to ``domain``."""
    conn = http.client.HTTPSConnection(domain, port, context=ctx, timeout=timeout)
    conn.sock = ctx.wrap_socket(socket.create_connection((address, port), timeout),
                                server_hostname=domain)
    return conn


class Site:
    """Where and how to reach the site (from bench/deployed.py's Deployed)."""

    def __init__(self, deployed, port: int = 443) -> None:
        self.deployed, self.port = deployed, port
        self.address, self.domain = deployed.web.address, deployed.web.domain
        self.workspace, self.key = deployed.web.workspace, deployed.key
        self.ca = str(deployed.ca)
        self.ctx = ssl.create_default_context(cafile=self.ca)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    def connect(self) -> http.client.HTTPSConnection:
        return _connect(self.address, self.port, self.domain, self.ctx)

    def call(self, conn: http.client.HTTPSConnection, method: str, path: str,
             body: dict | None = None, token: str | None = None) -> tuple[int, bytes]:
        """``token``: the API key's when None, no Authorization when ""."""
        headers = {"Host": self.domain, "Content-Type": "application/json"}
        if token != "":
            headers["Authorization"] = f"Bearer {token or self.key}"
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()

    def host_usage(self) -> dict:
        site = self.deployed.site
        cp = site.inventory.groups["control_plane"][0]
        command = f"python3 -c {_shell_quote(_USAGE)}"
        result = read_facts(site.inventory.pyinfra_groups(), {"usage": command}, limit=[cp.name])
        return json.loads(result.hosts[cp.name].facts.get("usage", "{}"))


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def enroll(site: Site, count: int, run: str) -> list[tuple[str, str]]:
    """``count`` machines enrolled through nginx with one join token: (machine id,
    credential) of each."""
    conn = site.connect()
    status, body = site.call(conn, "POST", f"/api/v1/workspaces/{site.workspace}/join-tokens",
                             {"name": f"bench fleet {run}", "ttl_seconds": 3600,
                              "usage_limit": count})
    conn.close()
    if status != 201:
        raise SystemExit(f"join token: {status} {body[:200]!r}")
    token = json.loads(body)["join_token"]
    local = threading.local()

    def one(i: int) -> tuple[str, str]:
        if not hasattr(local, "conn"):
            local.conn = site.connect()
        for _ in range(5):
            try:
                status, body = site.call(local.conn, "POST", "/api/agent/v1/enroll",
                                         {"join_token": token, "hostname": f"bench-{run}-{i}",
                                          "version": "0.1.0+bench"}, token="")
            except (OSError, http.client.HTTPException):
                local.conn = site.connect()
                continue
            if status == 201:
                answer = json.loads(body)
                return answer["machine_id"], answer["credential"]
            time.sleep(1)
        raise SystemExit(f"enrollment {i}: {status} {body[:200]!r}")

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        credentials = list(pool.map(one, range(count)))
    print(f"enrolled {count} machines in {time.monotonic() - started:.0f} s", flush=True)
    return credentials


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.received: set[str] = set()
        self.polls = self.reconnects = 0
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Agent:
    """One cmdop-agent's protocol on a keep-alive TLS connection to nginx: poll, and for
    the work it gets, ack it (and answer session.open with session.opened)."""

    def __init__(self, site: Site, machine_id: str, credential: str, stats: Stats) -> None:
        self.site, self.machine_id, self.credential = site, machine_id, credential
        self.stats = stats
        self.cursor: str | None = None
        self.waiting = False
        self.boot = uuid.uuid4().hex
        self.seq = 0
        self.opened: set[str] = set()
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _connect(self) -> None:
        self.conn = await asyncio.open_connection(self.site.address, self.site.port,
                                                  ssl=self.site.ctx,
                                                  server_hostname=self.site.domain)

    async def request(self, method: str, path: str, body: dict | None = None
                      ) -> tuple[int, bytes]:
        if self.conn is None:
            await self._connect()
        assert self.conn is not None
        reader, writer = self.conn
        data = json.dumps(body).encode() if body is not None else b""
        writer.write((f"{method} {path} HTTP/1.1\r\nHost: {self.site.domain}\r\n"
                      f"Authorization: Bearer {self.credential}\r\n"
                      "User-Agent: cmdop-agent/bench\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
        await writer.drain()
        return await _read_response(reader)

    async def heartbeat(self) -> None:
        """One heartbeat on a connection of its own, retried (bounded) as the agent does."""
        answer: object = None
        for _ in range(10):
            try:
                status, body = await self.request("POST", "/api/agent/v1/heartbeat",
                                                  {"version": "0.1.0+bench",
                                                   "boot_id": self.boot})
                if status == 200:
                    return
                answer = (status, body[:200])
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as exc:
                answer = exc
                self.conn = None
            await asyncio.sleep(1 + random.random())
        raise SystemExit(f"heartbeat: {answer!r}")

    async def _handle(self, items: list[dict], arrived: float) -> None:
        events = []
        for item in items:
            created = datetime.datetime.fromisoformat(item["created"].replace("Z", "+00:00"))
            if item["type"] == "session.input":
                self.stats.latencies.append(arrived - created.timestamp())
                self.stats.received.add(item["id"])
            elif item["type"] == "session.open":
                self.seq += 1
                events.append({"seq": self.seq, "type": "session.opened", "pid": 1,
                               "session_id": item["session_id"], "work_id": item["id"]})
                self.opened.add(item["session_id"])
        if events:
            status, _ = await self.request("POST", "/api/agent/v1/events",
                                           {"boot_id": self.boot, "events": events})
            if status != 200:
                self.stats.error(f"events {status}")
        status, _ = await self.request("POST", "/api/agent/v1/work/ack",
                                       {"ids": [i["id"] for i in items]})
        if status != 200:
            self.stats.error(f"ack {status}")

    async def run(self) -> None:
        while True:
            query = "wait=25" + (f"&cursor={self.cursor}" if self.cursor else "")
            self.waiting = True
            try:
                status, body = await self.request("GET", f"/api/agent/v1/work?{query}")
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
                self.waiting = False
                self.stats.reconnects += 1
                if self.conn is not None:
                    self.conn[1].close()
                self.conn = None
                await asyncio.sleep(random.random())
                continue
            self.waiting = False
            arrived = time.time()
            if status != 200:
                self.stats.error(str(status))
                await asyncio.sleep(1 + random.random())  # the agent backs off too
                continue
            page = json.loads(body)
            self.cursor = page["cursor"]
            self.stats.polls += 1
            if page["items"]:
                await self._handle(page["items"], arrived)


def user_api_probe(where: tuple[str, int, str, str], key: str, seconds: float, rate: float,
                   out: multiprocessing.Queue) -> None:
    """A person's client beside the fleet (a process of its own: its own interpreter
    lock): GET /api/v1/me at ``rate`` a second on one keep-alive connection to ``where``
    (address, port, domain, CA file); puts ([seconds], {status: count}) on ``out``."""
    address, port, domain, ca = where
    ctx = ssl.create_default_context(cafile=ca)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    conn = _connect(address, port, domain, ctx)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            conn.request("GET", "/api/v1/me", headers={"Host": domain,
                                                       "Authorization": f"Bearer {key}"})
            answer = conn.getresponse()
            answer.read()
            status = str(answer.status)
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            conn.close()
            conn = _connect(address, port, domain, ctx)
        took = time.perf_counter() - started
        statuses[status] = statuses.get(status, 0) + 1
        if status == "200":
            latencies.append(took)
        time.sleep(max(0.0, 1 / rate - took))
    conn.close()
    out.put((latencies, statuses))


def _deliveries(site: Site, sessions: list[tuple[str, Agent]], stats: Stats, seconds: float,
                rate: float) -> tuple[set[str], dict[str, int]]:
    """Keys typed into parked agents' sessions for ``seconds``: the work ids enqueued and
    the input calls' statuses that were not 202."""
    conn = site.connect()
    sent: set[str] = set()
    refused: dict[str, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick = time.monotonic()
        idle = [(sid, a) for sid, a in sessions if a.waiting]
        if idle:
            sid, _ = random.choice(idle)
            path = f"/api/v1/workspaces/{site.workspace}/sessions/{sid}/input"
            try:
                status, body = site.call(conn, "POST", path, {"data_b64": "eA=="})
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, type(exc).__name__.encode()
                conn = site.connect()
            if status == 202:
                sent.add(json.loads(body)["work_id"])
            else:
                refused[str(status)] = refused.get(str(status), 0) + 1
        time.sleep(max(0.0, 1 / rate - (time.monotonic() - tick)))
    conn.close()
    return sent, refused


async def _open_sessions(site: Site, agents: list[Agent], count: int
                         ) -> list[tuple[str, Agent]]:
    """``count`` sessions opened by the user API on agents that heartbeat first, once each
    agent has answered session.open."""
    chosen = random.sample(agents, min(count, len(agents)))
    # a heartbeat on a connection of its own: the agent's own is parked in its poll
    for agent in chosen:
        helper = Agent(site, agent.machine_id, agent.credential, agent.stats)
        helper.boot = agent.boot
        await helper.heartbeat()
        assert helper.conn is not None
        helper.conn[1].close()

    conn = await asyncio.to_thread(site.connect)
    opened = []
    for agent in chosen:
        status, body = await asyncio.to_thread(
            site.call, conn, "POST", f"/api/v1/workspaces/{site.workspace}/sessions",
            {"machine_id": agent.machine_id, "cols": 80, "rows": 24})
        if status != 201:
            raise SystemExit(f"session open: {status} {body[:200]!r}")
        opened.append((json.loads(body)["session_id"], agent))
    conn.close()
    deadline = time.monotonic() + 60
    while not all(sid in agent.opened for sid, agent in opened):
        if time.monotonic() > deadline:
            raise SystemExit("the agents did not get their session.open in 60 s")
        await asyncio.sleep(0.2)
    return opened


async def _level(site: Site, machines: list[tuple[str, str]], args: argparse.Namespace) -> dict:
    stats = Stats()
    agents = [Agent(site, mid, cred, stats) for mid, cred in machines]
    tasks: list[asyncio.Task] = []
    try:
        return await _measure(site, agents, stats, tasks, args)
    finally:  # whatever happened, the site is left without our connections
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for agent in agents:
            if agent.conn is not None:
                agent.conn[1].close()


async def _measure(site: Site, agents: list[Agent], stats: Stats, tasks: list[asyncio.Task],
                   args: argparse.Namespace) -> dict:
    started = time.monotonic()
    # ramp: agents connect evenly over ``ramp`` seconds, in a batch every 50 ms
    step = max(1, round(len(agents) * 0.05 / max(args.ramp, 0.05)))
    for i in range(0, len(agents), step):
        tasks += [asyncio.create_task(a.run()) for a in agents[i:i + step]]
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 120
    while sum(a.waiting for a in agents) < len(agents) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    held_after_ramp = sum(a.waiting for a in agents)
    ramp_s = time.monotonic() - started
    sessions = await _open_sessions(site, agents, args.sessions)
    usage_before = await asyncio.to_thread(site.host_usage)
    probe_out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    probe = multiprocessing.get_context("spawn").Process(
        target=user_api_probe, args=((site.address, site.port, site.domain, site.ca), site.key,
                                     args.seconds, args.api_rate, probe_out), daemon=True)
    probe.start()
    waiting: list[int] = []
    delivering = asyncio.create_task(asyncio.to_thread(
        _deliveries, site, sessions, stats, args.seconds, args.rate))
    while not delivering.done():
        waiting.append(sum(a.waiting for a in agents))
        await asyncio.sleep(0.5)
    sent, refused = delivering.result()
    usage_after = await asyncio.to_thread(site.host_usage)
    api_latencies, api_statuses = await asyncio.to_thread(probe_out.get, True,
                                                          args.seconds + 60)
    probe.join(timeout=10)
    await asyncio.sleep(2.0)  # the last deliveries' answers
    lat = stats.latencies
    return {
        "agents": len(agents), "held_after_ramp": held_after_ramp,
        "ramp_s": round(ramp_s, 1), "min_parked_in_window": min(waiting, default=0),
        "deliveries": len(sent & stats.received), "undelivered": len(sent - stats.received),
        "input_refused": refused,
        "p50_ms": _pct(lat, 0.50), "p99_ms": _pct(lat, 0.99),
        "max_ms": round(max(lat) * 1000, 1) if lat else None,
        "polls": stats.polls, "agent_errors": stats.errors, "reconnects": stats.reconnects,
        "api_calls": sum(api_statuses.values()), "api_statuses": api_statuses,
        "api_p50_ms": _pct(api_latencies, 0.50), "api_p99_ms": _pct(api_latencies, 0.99),
        "host": _host_figures(usage_before, usage_after),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def _host_figures(before: dict, after: dict) -> dict:
    """CPU % (of one core) over the window and RSS MiB at its end, per process name, for
    the names that used a CPU % or more or hold 20 MiB or more."""
    elapsed = after["at"] - before["at"]
    figures = {}
    for name, (ticks, kb, count) in after["usage"].items():
        used = ticks - before["usage"].get(name, (0, 0, 0))[0]
        cpu = 100 * used / after["hz"] / elapsed
        if cpu >= 1 or kb >= 20 * 1024:
            figures[name] = {"cpu_pct": round(cpu, 1), "rss_mib": round(kb / 1024), "n": count}
    return dict(sorted(figures.items(), key=lambda kv: -kv[1]["cpu_pct"]))


def main(argv: list[str]) -> None:
    from bench.deployed import deployed

    parser = argparse.ArgumentParser(prog="bench/fleet.py --site",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--site", type=Path, required=True)
    parser.add_argument("--levels", default="1000,2000,5000")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries per second")
    parser.add_argument("--api-rate", type=float, default=5.0,
                        help="user-API calls per second beside the fleet")
    parser.add_argument("--ramp", type=float, default=25.0)
    parser.add_argument("--sessions", type=int, default=20,
                        help="agents that get a session the deliveries type into")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    if max(levels) > MAX_AGENTS or args.seconds > 600 or args.ramp > 120:
        raise SystemExit(f"at most {MAX_AGENTS} agents, 600 s and a 120 s ramp")
    # the simulated fleet's own collector passes would stop this loop and count as delivery
    # time: tuned as the control plane's are (bench/fleet.py does the same)
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    with deployed(args.site) as target:
        site = Site(target)
        print(f"bench/fleet.py --site: {site.domain} through nginx on {site.address} "
              f"(TLS 1.3); {os.cpu_count()} CPUs here", flush=True)
        machines = enroll(site, max(levels), uuid.uuid4().hex[:6])
        for n in levels:
            result = asyncio.run(_level(site, machines[:n], args))
            results.append(result)
            print(json.dumps(result), flush=True)
    print(f"\n{'agents':>7} {'held':>6} {'deliv':>6} {'p50 ms':>7} {'p99 ms':>8} "
          f"{'api p99':>8} {'errors':>7} {'host cpu %':>11} {'host MiB':>9} {'load':>5}")
    for r in results:
        errors = sum(r["agent_errors"].values()) + sum(
            v for k, v in r["api_statuses"].items() if k != "200")
        cpu = sum(v["cpu_pct"] for v in r["host"].values())
        mib = sum(v["rss_mib"] for v in r["host"].values())
        print(f"{r['agents']:>7} {r['min_parked_in_window']:>6} {r['deliveries']:>6} "
              f"{r['p50_ms']:>7} {r['p99_ms']:>8} {r['api_p99_ms']:>8} {errors:>7} "
              f"{cpu:>11.0f} {mib:>9} {r['loadavg_1m']:>5}")
