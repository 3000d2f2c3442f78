"""How many long-polling agents one control plane holds: work delivery, the user API beside
them, the workers' memory and the database connections.

Loopback only, bounded, everything started here and stopped by PID at the end: a scratch
Postgres and Redis (tests/support/services.py) and the control plane under gunicorn's
``asgi`` worker on a unix socket, plain HTTP, as a deployed gunicorn listens behind nginx
(tests/support/control_plane.py; nginx and TLS are not in this path). N simulated agents in
one asyncio process each keep one keep-alive connection doing
``GET /api/agent/v1/work?wait=25&cursor=…`` in a loop exactly like cmdop-agent. Per level
(default 5,000 agents) they connect over ``--ramp`` seconds (25 = spread over one poll
interval like a running fleet; 1 = every agent reconnecting at once), then for ``--seconds``
work is enqueued for a random parked agent ``--rate`` times a second (workqueue.enqueue:
XADD + PUBLISH, what a session endpoint does) and enqueue → response-received is measured.
The window is longer than the 25 s poll timeout, so every agent's re-poll falls inside it.

Alongside, a separate process calls the user API (``GET …/sessions`` with an API key)
``--api-rate`` times a second on connections of its own. Sampled every second: the RSS and
CPU of every gunicorn worker, and the backends Postgres holds for the two databases. The
control plane's own count of parked polls comes from its /metrics.

    .venv/bin/python bench/fleet.py [--levels 5000 --workers 2 --seconds 30 --ramp 25
                                     --rate 20 --api-rate 5 --pool 0]

``--pool N`` runs the workers with Django's psycopg pool of N connections per worker and
database (server.toml [database] pool_max_size), ``--pool-timeout`` its wait for one.

``--site DIR``: the same fleet against a deployed site (e.g. a lab's) through its nginx over
TLS instead, with the control-plane host's CPU and memory (bench/fleet_site.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import http.client
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pty import migrated  # noqa: E402
from tests.support.control_plane import ControlPlane, make_pki  # noqa: E402
from tests.support.services import PostgresServer, RedisServer  # noqa: E402

MAX_AGENTS = 10000
# the user-API probe's calls are session operations: raise their limit, or the bench
# measures the limiter (the same settings as bench/pty.py)
BENCH_SETTINGS = '''from cmdop_server.settings.test import *  # noqa: F403

CMDOP_RATE_LIMITS = {**CMDOP_RATE_LIMITS,  # noqa: F405
                     "session": "1000000/min", "file": "1000000/min"}
'''


def _prepare(pg: PostgresServer, rd: RedisServer, count: int) -> tuple[list, str, str]:
    """Databases, migrations, one workspace with ``count`` machines and an API key:
    ([(pk, credential)], workspace slug, API key)."""
    migrated(pg, rd)
    from cmdop_server import credentials
    from cmdop_server.identity import actions
    from cmdop_server.identity.models import Membership, User
    from cmdop_server.machines import tokens
    from cmdop_server.machines.models import Machine

    owner = User.objects.create_user("bench-owner", password=None)
    ws = actions.do_create_workspace(owner, "bench", "Bench")
    _, key = actions.do_create_api_key(Membership.objects.in_workspace(ws).get(user=owner),
                                       "bench")
    creds = [tokens.new_machine_credential() for _ in range(count)]
    Machine.unscoped.bulk_create([
        Machine(workspace=ws, hostname=f"agent-{i}", public_id=f"m_bench{i}",
                enrollment=Machine.Enrollment.JOIN_TOKEN,
                credential_hash=credentials.sha256_hex(c)) for i, c in enumerate(creds)])
    pks = Machine.objects.in_workspace(ws).order_by("id").values_list("pk", flat=True)
    from django.db import connections

    connections.close_all()  # the bench's own connections are not the control plane's
    return list(zip(pks, creds, strict=True)), ws.slug, key


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.pending: dict[int, float] = {}
        self.polls = self.reconnects = 0
        self.errors: dict[str, int] = {}
        self.min_waiting: int | None = None

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Agent:
    """One cmdop-agent's poll loop on a keep-alive connection to gunicorn's socket."""

    def __init__(self, socket_path: str, pk: int, credential: str, stats: Stats) -> None:
        self.socket_path, self.pk, self.credential, self.stats = (socket_path, pk, credential,
                                                                  stats)
        self.cursor: str | None = None
        self.waiting = False

    async def run(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        try:
            while True:
                query = "wait=25" + (f"&cursor={self.cursor}" if self.cursor else "")
                writer.write((f"GET /api/agent/v1/work?{query} HTTP/1.1\r\n"
                              f"Host: localhost\r\nAuthorization: Bearer {self.credential}\r\n"
                              "User-Agent: cmdop-agent/bench\r\n\r\n").encode())
                await writer.drain()
                self.waiting = True
                try:
                    status, body = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.waiting = False
                    self.stats.reconnects += 1
                    writer.close()
                    reader, writer = await asyncio.open_unix_connection(self.socket_path)
                    continue
                self.waiting = False
                arrived = time.perf_counter()
                if status != 200:
                    self.stats.error(str(status))
                    await asyncio.sleep(1 + random.random())  # the agent backs off too
                    continue
                page = json.loads(body)
                self.cursor = page["cursor"]
                self.stats.polls += 1
                if page["items"]:
                    sent = self.stats.pending.pop(self.pk, None)
                    if sent is not None:
                        self.stats.latencies.append(arrived - sent)
        finally:
            writer.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def user_api_probe(socket_path: str, key: str, slug: str, seconds: float, rate: float,
                   clients: int, out: multiprocessing.Queue) -> None:
    """People's clients beside the fleet (a process of their own: its own interpreter
    lock), ``clients`` threads each doing authenticated GETs at ``rate`` a second on a
    connection of its own; puts ([seconds], {status: count}) on ``out``."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    threads = [threading.Thread(target=_user_api_client, args=(
        socket_path, key, slug, seconds, rate, latencies, statuses)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put((latencies, statuses))


def _user_api_client(socket_path: str, key: str, slug: str, seconds: float, rate: float,
                     latencies: list[float], statuses: dict[str, int]) -> None:
    conn = UnixHTTPConnection(socket_path)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            conn.request("GET", f"/api/v1/workspaces/{slug}/sessions",
                         headers={"Authorization": f"Bearer {key}"})
            resp = conn.getresponse()
            resp.read()
            status = str(resp.status)
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            conn.close()
            conn = UnixHTTPConnection(socket_path)
        took = time.perf_counter() - started
        statuses[status] = statuses.get(status, 0) + 1
        if status == "200":
            latencies.append(took)
        time.sleep(max(0.0, 1 / rate - took))
    conn.close()


def _children(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == master:
                    pids.append(int(entry.name))
    return pids


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every core (/proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class ServerSampler(threading.Thread):
    """Once a second: each worker's RSS, and the backends open on the two databases."""

    def __init__(self, master: int, pg: PostgresServer) -> None:
        super().__init__(daemon=True)
        self.master, self.pg = master, pg
        self.stop = threading.Event()
        self.rss: dict[int, float] = {}
        self.backends: list[int] = []

    def run(self) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.pg.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            while not self.stop.is_set():
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname IN "
                                   "('cmdop', 'cmdop_audit')").fetchone()
                self.backends.append(int(row[0]) if row else 0)
                for pid in _children(self.master):
                    with contextlib.suppress(OSError):
                        self.rss[pid] = max(self.rss.get(pid, 0.0), _rss_mib(pid))
                self.stop.wait(1.0)


def _parked(socket_path: str) -> int | None:
    """The control plane's own count of parked polls (cmdop_agent_polls_parked)."""
    conn = UnixHTTPConnection(socket_path)
    try:
        conn.request("GET", "/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
        text = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith("cmdop_agent_polls_parked "):
            return int(float(line.split()[1]))
    return None


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


async def _level(cp: ControlPlane, pg: PostgresServer, machines: list[tuple[int, str]],
                 args: argparse.Namespace, slug: str, key: str) -> dict:
    from cmdop_server import workqueue

    socket_path = str(cp.unix_socket)
    stats = Stats()
    agents = [Agent(socket_path, pk, cred, stats) for pk, cred in machines]
    tasks = []
    # ramp: agents connect evenly over ``ramp`` seconds, in a batch every 50 ms
    step = max(1, round(len(agents) * 0.05 / max(args.ramp, 0.05)))
    for i in range(0, len(agents), step):
        tasks += [asyncio.create_task(a.run()) for a in agents[i:i + step]]
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 60
    while sum(a.waiting for a in agents) < len(agents) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    # after a fast ramp the server is still working through the connect storm: give it
    # that long before timing deliveries
    await asyncio.sleep(1.0 + (len(agents) / 200 if args.ramp < 5 else 0))
    assert cp.proc is not None
    workers = _children(cp.proc.pid)
    cpu_before = {pid: _cpu_seconds(pid) for pid in workers}
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    machine_before = _machine_cpu()
    sampler = ServerSampler(cp.proc.pid, pg)
    sampler.start()
    probe_out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    probe = multiprocessing.get_context("spawn").Process(
        target=user_api_probe, args=(socket_path, key, slug, args.seconds, args.api_rate,
                                     args.api_clients, probe_out), daemon=True)
    probe.start()
    parked_at_start = await asyncio.to_thread(_parked, socket_path)
    started = time.monotonic()
    end = started + args.seconds
    interval = 1.0 / args.rate
    while time.monotonic() < end:
        idle = [a for a in random.sample(agents, min(20, len(agents)))
                if a.pk not in stats.pending and a.waiting]
        if idle:
            target = idle[0]
            stats.pending[target.pk] = time.perf_counter()
            workqueue.enqueue(target.pk, "session.input", {"data_b64": "eA=="}, "s_bench")
        waiting = sum(a.waiting for a in agents)
        stats.min_waiting = waiting if stats.min_waiting is None else min(stats.min_waiting,
                                                                          waiting)
        await asyncio.sleep(interval)
    elapsed = time.monotonic() - started
    parked_at_end = await asyncio.to_thread(_parked, socket_path)
    cpu = {pid: _cpu_seconds(pid) - cpu_before[pid] for pid in workers
           if Path(f"/proc/{pid}").exists()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    machine = [a - b for a, b in zip(_machine_cpu(), machine_before, strict=True)]
    api_latencies, api_statuses = await asyncio.to_thread(probe_out.get, True,
                                                          args.seconds + 60)
    probe.join(timeout=10)
    await asyncio.sleep(1.0)
    sampler.stop.set()
    sampler.join(timeout=10)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = stats.latencies
    client_cpu = (usage.ru_utime + usage.ru_stime - usage_before.ru_utime
                  - usage_before.ru_stime)
    return {
        "agents": len(agents), "parked_at_start": parked_at_start,
        "parked_at_end": parked_at_end, "min_waiting_client": stats.min_waiting,
        "deliveries": len(lat), "undelivered": len(stats.pending),
        "p50_ms": _pct(lat, 0.50), "p99_ms": _pct(lat, 0.99),
        "max_ms": round(max(lat) * 1000, 1) if lat else None,
        "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        "polls": stats.polls, "agent_errors": stats.errors, "reconnects": stats.reconnects,
        "api_calls": sum(api_statuses.values()), "api_statuses": api_statuses,
        "api_p50_ms": _pct(api_latencies, 0.50), "api_p99_ms": _pct(api_latencies, 0.99),
        "worker_rss_mib": [round(v, 1) for v in sampler.rss.values()],
        "worker_cpu_pct": [round(100 * v / elapsed, 1) for v in cpu.values()],
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1),
        # all of this machine's cores together (200 % = both of two busy): the bench, the
        # workers, Postgres, Redis and whatever else runs here
        "machine_cpu_pct": round(100 * machine[0] / elapsed, 1),
        "machine_cores_busy_pct": round(100 * machine[0] / machine[1], 1),
        "db_backends_peak": max(sampler.backends, default=0),
        "db_backends_median": (statistics.median(sampler.backends)
                               if sampler.backends else 0),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    if any(arg == "--site" or arg.startswith("--site=") for arg in sys.argv[1:]):
        from bench.fleet_site import main as on_site

        on_site(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="5000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries per second")
    parser.add_argument("--api-rate", type=float, default=5.0,
                        help="user-API calls per second beside the fleet")
    parser.add_argument("--api-clients", type=int, default=1,
                        help="user-API clients, each at --api-rate")
    parser.add_argument("--ramp", type=float, default=25.0,
                        help="seconds over which agents connect: 25 (one poll interval) is a "
                        "fleet in its steady state; 1 is every agent reconnecting at once")
    parser.add_argument("--pool", type=int, default=0,
                        help="psycopg pool size per worker and database (0: unpooled)")
    parser.add_argument("--pool-timeout", type=float, default=2.0)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if max(levels) > MAX_AGENTS or args.seconds > 600 or args.ramp > 120:
        raise SystemExit(f"at most {MAX_AGENTS} agents, 600 s and a 120 s ramp")
    # a plain SIGTERM must still stop gunicorn and the scratch daemons (the exit stack)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # the simulated fleet's own collector passes (thousands of agents' coroutines) would
    # stop this loop and count as delivery time: tuned as the control plane's are
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # gunicorn inherits it
    results = []
    with contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="cmdop-bench-fleet-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        (scratch / "cmdop_bench_settings.py").write_text(BENCH_SETTINGS)
        pg = stack.enter_context(PostgresServer())
        rd = stack.enter_context(RedisServer())
        machines, slug, key = _prepare(pg, rd, max(levels))
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(scratch),
                                                           os.environ.get("PYTHONPATH")])),
               # as deployed: gunicorn's only peer is nginx on the unix socket
               "CMDOP_TEST_TRUSTED_PROXIES": "unix",
               "CMDOP_TEST_METRICS_SOURCES": "127.0.0.1/32",
               "CMDOP_TEST_METRICS_DIR": str(scratch / "metrics"),
               # production keeps database connections (conn_max_age 60, or its pool)
               "CMDOP_TEST_CONN_MAX_AGE": "60"}
        if args.pool:
            env |= {"CMDOP_TEST_DB_POOL_MAX_SIZE": str(args.pool),
                    "CMDOP_TEST_DB_POOL_TIMEOUT": str(args.pool_timeout)}
        cp = ControlPlane(make_pki(scratch / "pki"), scratch / "gunicorn.log",
                          settings="cmdop_bench_settings", workers=args.workers, env=env,
                          extra_args=("--worker-connections", str(max(levels) * 2)),
                          unix_socket=scratch / "gunicorn.sock")
        stack.enter_context(cp)
        print(f"bench/fleet.py: gunicorn asgi, {args.workers} worker(s) on a unix socket, "
              f"pool {args.pool or 'off'}; scratch PostgreSQL and Redis; "
              f"{os.cpu_count()} CPUs", flush=True)
        for n in levels:
            result = asyncio.run(_level(cp, pg, machines[:n], args, slug, key))
            results.append(result)
            print(json.dumps(result), flush=True)
        log = cp.log_path.read_text(errors="replace").splitlines()
    print(f"\n{'agents':>7} {'parked':>7} {'deliv':>6} {'p50 ms':>7} {'p99 ms':>8} "
          f"{'api p99':>8} {'errors':>7} {'rss MiB':>13} {'cpu %':>11} {'bench %':>7} "
          f"{'host %':>6} {'db':>4} {'load':>5}")
    for r in results:
        errors = sum(r["agent_errors"].values()) + sum(
            v for k, v in r["api_statuses"].items() if k != "200")
        print(f"{r['agents']:>7} {r['parked_at_end']!s:>7} {r['deliveries']:>6} "
              f"{r['p50_ms']:>7} {r['p99_ms']:>8} {r['api_p99_ms']:>8} {errors:>7} "
              f"{'/'.join(str(round(v)) for v in r['worker_rss_mib']):>13} "
              f"{'/'.join(str(round(v)) for v in r['worker_cpu_pct']):>11} "
              f"{r['client_cpu_pct']:>7} {r['machine_cpu_pct']:>6} "
              f"{r['db_backends_peak']:>4} {r['loadavg_1m']:>5}")
    # why requests were refused, as the control plane logged it (e.g. "redis unavailable:
    # TimeoutError": a reply later than redis_client.READ_TIMEOUT)
    refusals = collections.Counter(m.group(1) for m in (
        re.search(r"(\w+ unavailable: .*)$", line) for line in log) if m)
    if refusals:
        print("\nrefusals in gunicorn's log: " + json.dumps(dict(refusals)))
    # a lost wake subscription wakes every parked poll of its worker to re-read at once
    lost = sum("wake subscription lost" in line for line in log)
    if lost:
        print(f"wake subscriptions lost and renewed: {lost}")
    if any("Traceback" in line for line in log):
        print("\ngunicorn's log has a traceback:\n" + "\n".join(log[-40:]))


if __name__ == "__main__":
    main()
