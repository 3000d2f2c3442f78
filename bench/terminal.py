"""Keystroke-to-echo and output throughput over the browser terminal's WebSocket, beside
the per-request path (one POST per keystroke, output through the cursor API).

Loopback only, everything real and started here, stopped by PID at the end: a scratch
Postgres and Redis, the control plane under gunicorn's ``asgi`` worker over TLS 1.3 and
the real ``cmdop-agent`` (the same set-up as bench/pty.py, whose helpers this reuses).

- keystroke-to-echo over the WebSocket: one binary frame of one byte to a shell running
  ``cat`` (the PTY echoes it), timed until the echoed byte comes back on the same socket;
  p50/p99 over ``--keys`` keystrokes. Then the same count over the user API (POST …/input,
  a parked long-poll on …/output), the path ``cmdop connect`` and the old page used.
- throughput: ``cat`` of a ``--mib`` MiB file, read by one browser-like reader (the
  WebSocket) until a marker after it arrives; with the agent's output caps raised so the
  control plane's side is what is measured.

    .venv/bin/python bench/terminal.py [--keys 500] [--mib 20] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pty import _agent, _percentile, big_file, keystrokes, loopback_site  # noqa: E402
from tests.support.websocket import TerminalSocket  # noqa: E402


def _attach(agent, sid: str) -> TerminalSocket:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(agent.owner)
    cookie = (settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value)
    return TerminalSocket(f"{agent.server}/w/{agent.ws.slug}/sessions/{sid}/terminal",
                          agent.ca, cookie)


class Reader:
    """The bytes one attached terminal received (JSON records are skipped)."""

    def __init__(self, sock: TerminalSocket) -> None:
        self.sock, self.data = sock, bytearray()

    def until(self, needle: bytes, start: int = 0) -> None:
        while needle not in self.data[start:]:
            message = self.sock.receive()
            if isinstance(message, bytes):
                self.data += message


def socket_keystrokes(agent, n: int, warmup: int = 10) -> list[float]:
    sid, _ = agent.open_session(cols=200, rows=50)
    reader = Reader(_attach(agent, sid))
    reader.sock.send_bytes(b"stty -echoctl; echo READY-$((1+1)); exec cat\n")
    reader.until(b"READY-2")
    samples = []
    for i in range(warmup + n):
        key = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
        mark = len(reader.data)
        started = time.perf_counter()
        reader.sock.send_bytes(key)
        reader.until(key, mark)
        if i >= warmup:
            samples.append((time.perf_counter() - started) * 1000)
    reader.sock.close()
    return samples


def socket_throughput(agent, big: Path) -> tuple[float, int, float]:
    sid, _ = agent.open_session(cols=200, rows=50)
    reader = Reader(_attach(agent, sid))
    reader.sock.send_bytes(b"echo READY-$((1+1))\n")
    reader.until(b"READY-2")
    mark = len(reader.data)
    started = time.perf_counter()
    reader.sock.send_bytes(f"cat {big}; echo END-$((40+2))\n".encode())
    reader.until(b"END-42", mark)
    elapsed = time.perf_counter() - started
    reader.sock.close()
    received = len(reader.data) - mark
    return received / elapsed / 1e6, received, elapsed


def _figures(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    print(f"{name}: n={len(ms)}  p50={statistics.median(ms):.1f} ms  "
          f"p99={_percentile(ms, 0.99):.1f} ms  max={ms[-1]:.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    args = parser.parse_args()
    agents = []
    with loopback_site("cmdop-bench-terminal-", args.workers) as (scratch, cp, stack):
        big = big_file(scratch, args.mib)
        stack.callback(lambda: [a.close() for a in agents])
        print(f"bench/terminal.py: real control plane on loopback (gunicorn asgi, "
              f"{args.workers} worker(s), TLS 1.3; PostgreSQL, Redis), real cmdop-agent",
              flush=True)
        raised = "[limits]\noutput_rate_bytes = 268435456\noutput_buffer_bytes = 4194304\n"
        agents.append(_agent(cp, scratch / "agent", raised))
        _figures("keystroke-to-echo, WebSocket (one frame per key)",
                 socket_keystrokes(agents[0], args.keys))
        _figures("keystroke-to-echo, per request (POST input + parked cursor read)",
                 keystrokes(agents[0], args.keys))
        mbs, got, secs = socket_throughput(agents[0], big)
        print(f"output throughput to one WebSocket reader: {mbs:.2f} MB/s "
              f"({got} bytes of a {args.mib} MiB cat in {secs:.1f} s)", flush=True)
        print(f"(machine load average over the last minute: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
