"""How many long-polling agents one control plane holds, and work-delivery latency.

Loopback only, bounded: a scratch Postgres and Redis (tests/support/services.py), the
control plane under gunicorn's native ``asgi`` worker on a free 127.0.0.1 port, and N
simulated agents in one asyncio process, each a keep-alive HTTP/1.1 connection doing
``GET /api/agent/v1/work?wait=25&cursor=…`` in a loop exactly like cmdop-agent. Per level
(default 100, 1000, 2000 agents) it ramps the agents up (``--ramp`` seconds: 25 = spread
over one poll interval like a running fleet, 1 = all reconnecting at once), then for
``--seconds`` enqueues work for a random idle agent ``--rate`` times a second
(workqueue.enqueue: XADD + PUBLISH, what a session endpoint does) and measures
enqueue → response-received. The window is
longer than the 25 s poll timeout, so every agent's re-poll falls inside it.

    .venv/bin/python bench/longpoll.py [--levels 100,1000,2000 --workers 2 --seconds 30
                                        --ramp 25]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.services import (  # noqa: E402
    PostgresServer,
    RedisServer,
    free_port,
    wait_for_port,
)

MAX_AGENTS_SAFETY = 5000


def _prepare(pg: PostgresServer, rd: RedisServer, count: int) -> list[tuple[int, str]]:
    """Databases, migrations, one workspace with ``count`` machines: [(pk, credential)]."""
    pg.psql("CREATE DATABASE cmdop; CREATE DATABASE cmdop_audit;")
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.test",
        "CMDOP_TEST_PG_PORT": str(pg.port), "CMDOP_TEST_REDIS_PORT": str(rd.port),
        "CMDOP_TEST_CONN_MAX_AGE": "60",
    })
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("migrate", database="audit", verbosity=0)
    from cmdop_server import credentials
    from cmdop_server.identity.models import Workspace
    from cmdop_server.machines import tokens
    from cmdop_server.machines.models import Machine

    ws = Workspace.objects.create(slug="bench", name="Bench")
    creds = [tokens.new_machine_credential() for _ in range(count)]
    Machine.unscoped.bulk_create([
        Machine(workspace=ws, hostname=f"agent-{i}", public_id=f"m_bench{i}",
                enrollment=Machine.Enrollment.JOIN_TOKEN,
                credential_hash=credentials.sha256_hex(c)) for i, c in enumerate(creds)])
    pks = Machine.objects.in_workspace(ws).order_by("id").values_list("pk", flat=True)
    return list(zip(pks, creds, strict=True))


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


class Agent:
    def __init__(self, port: int, pk: int, credential: str, stats: Stats) -> None:
        self.port, self.pk, self.credential, self.stats = port, pk, credential, stats
        self.cursor: str | None = None
        self.waiting = False

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while True:
                query = "wait=25" + (f"&cursor={self.cursor}" if self.cursor else "")
                writer.write((f"GET /api/agent/v1/work?{query} HTTP/1.1\r\n"
                              f"Host: 127.0.0.1\r\nAuthorization: Bearer {self.credential}\r\n"
                              "User-Agent: cmdop-agent/bench\r\n\r\n").encode())
                await writer.drain()
                self.waiting = True
                try:
                    status, body = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.waiting = False
                    self.stats.reconnects += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    continue
                self.waiting = False
                arrived = time.perf_counter()
                if status != 200:
                    self.stats.errors += 1
                    await asyncio.sleep(1)
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


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.pending: dict[int, float] = {}
        self.polls = self.errors = self.reconnects = 0
        self.min_waiting: int | None = None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _level(port: int, machines: list[tuple[int, str]], seconds: float,
                 rate: float, ramp: float) -> dict:
    from cmdop_server import workqueue

    stats = Stats()
    agents = [Agent(port, pk, cred, stats) for pk, cred in machines]
    tasks = []
    # ramp: agents connect evenly over ``ramp`` seconds, in a batch every 50 ms
    step = max(1, round(len(agents) * 0.05 / max(ramp, 0.05)))
    for i in range(0, len(agents), step):
        tasks += [asyncio.create_task(a.run()) for a in agents[i:i + step]]
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 60
    while sum(a.waiting for a in agents) < len(agents) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    # after a fast ramp the server is still working through the connect storm at a few
    # hundred polls/s on 2 cores: give it that long before timing deliveries
    await asyncio.sleep(1.0 + (len(agents) / 200 if ramp < 5 else 0))
    held_at_start = sum(a.waiting for a in agents)
    end = time.monotonic() + seconds
    interval = 1.0 / rate
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
    await asyncio.sleep(1.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = stats.latencies
    return {"agents": len(agents), "held_at_start": held_at_start,
            "min_waiting_during_window": stats.min_waiting, "deliveries": len(lat),
            "undelivered": len(stats.pending), "p50_ms": round(_pct(lat, 0.50), 2),
            "p99_ms": round(_pct(lat, 0.99), 2), "max_ms": round(max(lat) * 1000, 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2), "polls": stats.polls,
            "errors": stats.errors, "reconnects": stats.reconnects}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="100,1000,2000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries per second")
    parser.add_argument("--ramp", type=float, default=25.0,
                        help="seconds over which agents connect: 25 (one poll interval) is a "
                        "fleet in its steady state; 1 is every agent reconnecting at once")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if max(levels) > MAX_AGENTS_SAFETY:
        raise SystemExit(f"at most {MAX_AGENTS_SAFETY} agents")
    # a plain SIGTERM must still stop gunicorn and the scratch daemons (the finally blocks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with PostgresServer() as pg, RedisServer() as rd:
        machines = _prepare(pg, rd, max(levels))
        port = free_port()
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.test"}
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "-k", "asgi",
             "-w", str(args.workers), "--worker-connections", str(max(levels) * 2),
             "-b", f"127.0.0.1:{port}", "--log-level", "warning",
             "cmdop_server.asgi:application"], env=env, start_new_session=True)
        try:
            wait_for_port("127.0.0.1", port, server)
            results = []
            for n in levels:
                result = asyncio.run(_level(port, machines[:n], args.seconds, args.rate,
                                            args.ramp))
                import redis

                info = redis.Redis(host=rd.host, port=rd.port).info("clients")
                result["redis_clients"] = info["connected_clients"]
                # this machine is shared: other work skews the tail, so say how busy it was
                result["loadavg_1m"] = round(os.getloadavg()[0], 2)
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"\n{'agents':>7} {'held':>6} {'deliveries':>10} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'errors':>6} {'load':>5}")
    for r in results:
        print(f"{r['agents']:>7} {r['min_waiting_during_window']:>6} {r['deliveries']:>10} "
              f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8} {r['errors']:>6} "
              f"{r['loadavg_1m']:>5}")


if __name__ == "__main__":
    main()
