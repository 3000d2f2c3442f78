"""Requests/s and p50/p99 latency of one authenticated API call under gunicorn.

The call is ``GET /api/v1/workspaces/<slug>`` with a Bearer access token: token lookup by
SHA-256 digest, revocation/expiry check, membership + permission check, JSON out. Everything
runs on this machine over loopback: a scratch Postgres and Redis (tests/support/services.py),
gunicorn on a free 127.0.0.1 port, and a client of keep-alive connections in threads.
The loop is bounded by ``--requests`` and ``--seconds``, whichever comes first.

    .venv/bin/python bench/auth.py [--workers 2 --threads 4 --concurrency 8]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pty import migrated  # noqa: E402
from tests.support.services import (  # noqa: E402
    PostgresServer,
    RedisServer,
    free_port,
    wait_for_port,
)

SLUG = "bench"


def _prepare(pg: PostgresServer, rd: RedisServer) -> str:
    """Databases, migrations, one user with a workspace; returns an access token."""
    migrated(pg, rd)
    from cmdop_server.identity import actions
    from cmdop_server.identity.models import User

    from tests.server.helpers import tokens_for

    user = User.objects.create_user("bench", password="bench-password-not-secret")  # noqa: S106
    actions.do_create_workspace(user, SLUG, "Bench")
    return tokens_for(user)["access_token"]


def _client(port: int, token: str, stop: float, budget: list, out: list, lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < stop:
        with lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        started = time.perf_counter()
        conn.request("GET", f"/api/v1/workspaces/{SLUG}", headers=headers)
        resp = conn.getresponse()
        resp.read()
        elapsed = time.perf_counter() - started
        if resp.status != 200:
            raise RuntimeError(f"unexpected {resp.status}")
        out.append(elapsed)
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.close()


def run(args: argparse.Namespace) -> None:
    with PostgresServer() as pg, RedisServer() as rd:
        token = _prepare(pg, rd)
        port = free_port()
        gunicorn = Path(sys.executable).with_name("gunicorn")
        proc = subprocess.Popen(
            [str(gunicorn), "cmdop_server.wsgi:application", "-b", f"127.0.0.1:{port}",
             "-w", str(args.workers), "-k", args.worker_class, "--threads", str(args.threads),
             "--log-level", "warning"],
            env={**os.environ, "CMDOP_TEST_DB_CMDOP": "cmdop", "CMDOP_TEST_CONN_MAX_AGE": "60",
                 "CMDOP_TEST_DB_CMDOP_AUDIT": "cmdop_audit"},
            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port("127.0.0.1", port, proc, timeout=30)
            warm: list[float] = []
            _client(port, token, time.monotonic() + 5, [200], warm, threading.Lock())
            latencies: list[float] = []
            budget, lock = [args.requests], threading.Lock()
            stop = time.monotonic() + args.seconds
            threads = [threading.Thread(target=_client,
                                        args=(port, token, stop, budget, latencies, lock))
                       for _ in range(args.concurrency)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(15)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"gunicorn {args.worker_class} workers={args.workers} threads={args.threads}, "
          f"client concurrency={args.concurrency}, cpus={os.cpu_count()}")
    print(f"requests={len(latencies)} seconds={wall:.2f} req/s={len(latencies) / wall:.0f} "
          f"p50={statistics.median(latencies) * 1000:.2f}ms p99={p99 * 1000:.2f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=20.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
