"""Keystroke-to-echo round trip and PTY output throughput through the real control plane.

Loopback only, everything real and started here, stopped by PID at the end: a scratch
Postgres and Redis (tests/support/services.py), the control plane under gunicorn's ``asgi``
worker over TLS 1.3 (tests/support/control_plane.py), and the real ``cmdop-agent`` process.
A person's side goes through the user API exactly as a client would:

- keystroke-to-echo: POST one byte to ``…/sessions/<id>/input`` (the shell runs ``cat``, so
  the PTY echoes it) while a reader keeps a long-poll on ``…/output`` parked (as a browser
  does), until that reader has the byte back; p50/p99 over ``--keys`` keystrokes. Path:
  user API → Redis stream → agent long-poll → PTY → echo → ANSI filter → agent event POST →
  Postgres commit + Redis buffer → the parked reader.
- throughput: ``cat`` of a ``--mib`` MiB text file in the session, read through the cursor
  API until a marker after it arrives; MB/s of terminal bytes received. Once with the
  agent's default output caps (``[limits] output_rate_bytes`` 1 MiB/s, ``output_buffer_bytes``
  256 KiB), once with them raised (``--raised-rate``, ``--raised-buffer``).

The control plane runs ``cmdop_server.settings.test`` with the user-API rate limits raised
(a keystroke and a read are each a "session operation"; the seed's 100/min would stop the
bench, not measure it) and database connections kept (production's conn_max_age 60).

    .venv/bin/python bench/pty.py [--keys 200] [--mib 20] [--workers 1] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.control_plane import ControlPlane, SessionOutput, make_pki  # noqa: E402
from tests.support.services import PostgresServer, RedisServer  # noqa: E402

DEFAULT_RATE = 1024 * 1024  # the agent's Limits defaults (cmdop_agent/config.py)
DEFAULT_BUFFER = 256 * 1024
BENCH_SETTINGS = '''from cmdop_server.settings.test import *  # noqa: F403

CMDOP_RATE_LIMITS = {**CMDOP_RATE_LIMITS,  # noqa: F405
                     "session": "1000000/min", "file": "1000000/min"}
'''


def migrated(pg: PostgresServer, rd: RedisServer) -> None:
    """Databases and migrations; Django set up in this process on them (each bench then
    makes what it needs with the control plane's own actions)."""
    pg.psql("CREATE DATABASE cmdop; CREATE DATABASE cmdop_audit;")
    os.environ.update({"DJANGO_SETTINGS_MODULE": "cmdop_server.settings.test",
                       "CMDOP_TEST_PG_PORT": str(pg.port),
                       "CMDOP_TEST_REDIS_PORT": str(rd.port)})
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("migrate", database="audit", verbosity=0)


def _agent(cp: ControlPlane, root: Path, limits: str = ""):
    from tests.server_sessions.real_agent import RealAgent

    agent = RealAgent(cp.url, cp.pki.ca, root, limits)
    agent.start()
    return agent


class ParkedReader(threading.Thread):
    """A client's live view: one long-poll on the cursor API always parked, as a browser
    keeps it, so a keystroke's echo is seen the moment the control plane has it."""

    def __init__(self, out: SessionOutput) -> None:
        super().__init__(daemon=True)
        self.out = out
        self.changed = threading.Condition()
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            got = self.out.read(wait=5)
            if got:
                with self.changed:
                    self.changed.notify_all()

    def wait_for(self, needle: bytes, start: int, timeout: float = 30) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: needle in self.out.data[start:], timeout):
                raise TimeoutError(needle)


def keystrokes(agent, n: int, warmup: int = 10) -> list[float]:
    """Milliseconds from POSTing one byte of input to a parked reader having its echo."""
    sid, out = agent.open_session(cols=200, rows=50)
    # once READY-2 is printed the shell has put the terminal back in cooked mode: the line
    # discipline echoes each byte typed from then on (cat only holds the line)
    agent.api.type(sid, b"stty -echoctl; echo READY-$((1+1)); exec cat\n")
    out.wait_for(b"READY-2")
    reader = ParkedReader(out)
    reader.start()
    samples = []
    for i in range(warmup + n):
        key = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
        with reader.changed:
            mark = len(out.data)
        started = time.perf_counter()
        agent.api.type(sid, key)
        reader.wait_for(key, mark)
        if i >= warmup:
            samples.append((time.perf_counter() - started) * 1000)
    reader.stopping = True
    reader.join(timeout=10)
    return samples


def throughput(agent, big: Path) -> tuple[float, int, float, int]:
    """(MB/s, bytes received, seconds, drop markers) for ``cat big`` in a new session."""
    sid, out = agent.open_session(cols=200, rows=50)
    marker = b"END-42"
    mark = len(out.data)
    started = time.perf_counter()
    agent.api.type(sid, f"cat {big}; echo END-$((40+2))\n".encode())
    while marker not in out.data[-4096:]:
        out.read(wait=10)
    elapsed = time.perf_counter() - started
    received = len(out.data) - mark
    return received / elapsed / 1e6, received, elapsed, out.dropped


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def loopback_site(prefix: str, workers: int = 1):
    """A scratch folder and the real control plane on loopback (gunicorn asgi over TLS, real
    PostgreSQL and Redis) with production's connection reuse; every bench here starts one.
    Yields (scratch, control plane, exit stack for the caller's own clean-ups)."""
    # a plain SIGTERM must still stop what we started (the exit stack below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    (scratch / "cmdop_bench_settings.py").write_text(BENCH_SETTINGS)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        pg = stack.enter_context(PostgresServer())
        rd = stack.enter_context(RedisServer())
        migrated(pg, rd)
        cp = ControlPlane(make_pki(scratch / "pki"), scratch / "gunicorn.log",
                          settings="cmdop_bench_settings", workers=workers,
                          env={"PYTHONPATH": os.pathsep.join(
                              filter(None, [str(scratch), os.environ.get("PYTHONPATH")])),
                               # production keeps database connections (conn_max_age 60)
                               "CMDOP_TEST_CONN_MAX_AGE": "60"})
        stack.enter_context(cp)
        yield scratch, cp, stack


def big_file(scratch: Path, mib: int) -> Path:
    """``mib`` MiB of printable lines for `cat` throughput runs."""
    big = scratch / "big.txt"
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\n"
    big.write_bytes(line * (mib * 1024 * 1024 // len(line)))
    return big


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    parser.add_argument("--raised-rate", type=int, default=256 * 1024 * 1024,
                        help="output_rate_bytes for the raised-cap run")
    parser.add_argument("--raised-buffer", type=int, default=4 * 1024 * 1024,
                        help="output_buffer_bytes for the raised-cap run")
    args = parser.parse_args()
    agents = []
    with loopback_site("cmdop-bench-pty-", args.workers) as (scratch, cp, stack):
        big = big_file(scratch, args.mib)
        stack.callback(lambda: [a.close() for a in agents])
        print(f"bench/pty.py: real control plane on loopback (gunicorn asgi, "
              f"{args.workers} worker(s), TLS 1.3; PostgreSQL, Redis), real cmdop-agent",
              flush=True)

        agents.append(_agent(cp, scratch / "agent-default"))
        ms = sorted(keystrokes(agents[0], args.keys))
        p50, p99 = statistics.median(ms), _percentile(ms, 0.99)
        verdict = "met" if p50 <= 50 else "MISSED"
        print(f"keystroke-to-echo: n={len(ms)}  p50={p50:.1f} ms  p99={p99:.1f} ms  "
              f"max={ms[-1]:.1f} ms  (target p50 <= 50 ms: {verdict})", flush=True)

        if args.skip_throughput:
            return
        mbs, got, secs, drops = throughput(agents[0], big)
        print(f"output throughput, agent default caps (output_rate_bytes={DEFAULT_RATE}, "
              f"output_buffer_bytes={DEFAULT_BUFFER}): {mbs:.2f} MB/s  "
              f"({got} bytes of {args.mib} MiB cat in {secs:.1f} s, {drops} drop markers)",
              flush=True)

        raised = (f"[limits]\noutput_rate_bytes = {args.raised_rate}\n"
                  f"output_buffer_bytes = {args.raised_buffer}\n")
        agents.append(_agent(cp, scratch / "agent-raised", raised))
        mbs, got, secs, drops = throughput(agents[1], big)
        print(f"output throughput, caps raised (output_rate_bytes={args.raised_rate}, "
              f"output_buffer_bytes={args.raised_buffer}): {mbs:.2f} MB/s  "
              f"({got} bytes in {secs:.1f} s, {drops} drop markers)", flush=True)
        print(f"(machine load average over the last minute: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
