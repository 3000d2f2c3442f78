"""Keystroke-to-echo and output throughput over the browser terminal's WebSocket, beside
the per-request path (one POST per keystroke, output through the cursor API).

Two targets, everything real:

- loopback (default): started here, stopped by PID at the end: a scratch Postgres and
  Redis, the control plane under gunicorn's ``asgi`` worker over TLS 1.3 and the real
  ``cmdop-agent`` (the same set-up as bench/pty.py, whose helpers this reuses);
- ``--site DIR``: a deployed site (e.g. the demo's on lab hosts) through its nginx, its
  Owner signed in on the login page, on an agent host of its own (``--machine``, else the
  first online); its agents' output caps are the site's, not raised.

- keystroke-to-echo over the WebSocket: one binary frame of one byte to a shell running
  ``cat`` (the PTY echoes it), timed until the echoed byte comes back on the same socket;
  p50/p99 over ``--keys`` keystrokes. Then the same count over the user API (POST …/input,
  a parked long-poll on …/output), the path ``cmdop connect`` and the old page used.
- throughput: ``--mib`` MiB of printable lines (``cat`` of a file on loopback, ``yes`` on a
  site's host), read by one browser-like reader (the WebSocket) until a marker after it
  arrives; on loopback with the agent's output caps raised so the control plane's side is
  what is measured.

    .venv/bin/python bench/terminal.py [--keys 500] [--mib 20] [--workers 1]
    .venv/bin/python bench/terminal.py --site sites/demo [--machine HOST]
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

LINE = "0123456789abcdefghijklmnopqrstuvwxyz" * 2  # + newline: 73 bytes, as big_file's


def _attach(agent, sid: str) -> TerminalSocket:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(agent.owner)
    cookie = (settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value)
    return TerminalSocket(f"{agent.server}/w/{agent.ws.slug}/sessions/{sid}/terminal",
                          agent.ca, cookie)


class LoopbackTarget:
    """The loopback agent: its sessions, and the browser terminal as its owner."""

    def __init__(self, agent) -> None:
        self.agent = agent

    def open_session(self, cols: int, rows: int):
        return self.agent.open_session(cols=cols, rows=rows)

    def terminal(self) -> TerminalSocket:
        sid, _ = self.agent.open_session(cols=200, rows=50)
        return _attach(self.agent, sid)

    @property
    def api(self):
        return self.agent.api


class SiteTarget:
    """A deployed site (bench/deployed.py): the same operations through its nginx."""

    def __init__(self, site, cookie: tuple[str, str]) -> None:
        self.site, self.cookie = site, cookie
        self.api = site.api()

    def open_session(self, cols: int, rows: int):
        return self.site.open_session(cols, rows)

    def terminal(self) -> TerminalSocket:
        sid, _ = self.site.open_session(200, 50)
        return self.site.attach(sid, self.cookie)


class Reader:
    """The bytes one attached terminal received (JSON records are skipped)."""

    def __init__(self, sock: TerminalSocket) -> None:
        self.sock, self.data = sock, bytearray()

    def until(self, needle: bytes, start: int = 0) -> None:
        while needle not in self.data[start:]:
            message = self.sock.receive()
            if isinstance(message, bytes):
                self.data += message


def socket_keystrokes(target, n: int, warmup: int = 10) -> list[float]:
    reader = Reader(target.terminal())
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


def socket_throughput(target, producer: str) -> tuple[float, int, float]:
    """The shell command ``producer``'s output to one WebSocket reader."""
    reader = Reader(target.terminal())
    reader.sock.send_bytes(b"echo READY-$((1+1))\n")
    reader.until(b"READY-2")
    mark = len(reader.data)
    started = time.perf_counter()
    reader.sock.send_bytes(f"{producer}; echo END-$((40+2))\n".encode())
    reader.until(b"END-42", mark)
    elapsed = time.perf_counter() - started
    reader.sock.close()
    received = len(reader.data) - mark
    return received / elapsed / 1e6, received, elapsed


def _figures(name: str, ms: list[float]) -> None:
    ms = sorted(ms)
    print(f"{name}: n={len(ms)}  p50={statistics.median(ms):.1f} ms  "
          f"p99={_percentile(ms, 0.99):.1f} ms  max={ms[-1]:.1f} ms", flush=True)


def measure(target, producer: str, keys: int, mib: int) -> None:
    _figures("keystroke-to-echo, WebSocket (one frame per key)", socket_keystrokes(target, keys))
    _figures("keystroke-to-echo, per request (POST input + parked cursor read)",
             keystrokes(target, keys))
    mbs, got, secs = socket_throughput(target, producer)
    print(f"output throughput to one WebSocket reader: {mbs:.2f} MB/s "
          f"({got} bytes of {mib} MiB of lines in {secs:.1f} s)", flush=True)
    print(f"(machine load average over the last minute: {os.getloadavg()[0]:.2f})")


def on_site(site_dir: Path, machine: str | None, keys: int, mib: int) -> None:
    from bench.deployed import deployed
    from tests.support.site_web import SIGN_IN_WAIT, patiently

    with deployed(site_dir, machine) as site:
        cookie = patiently(lambda: site.web.sign_in(site.site.secrets["owner_password"]),
                           at_least=SIGN_IN_WAIT)
        print(f"bench/terminal.py: deployed site {site.web.domain} through nginx on "
              f"{site.web.address} (TLS 1.3), agent host {site.machine['hostname']}; "
              "the site's own output caps", flush=True)
        producer = f"yes {LINE} | head -c {mib * 1024 * 1024}"
        measure(SiteTarget(site, cookie), producer, keys, mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (loopback)")
    parser.add_argument("--site", type=Path, help="a deployed site's folder instead of loopback")
    parser.add_argument("--machine", help="with --site: the agent host (default: first online)")
    args = parser.parse_args()
    if args.site:
        on_site(args.site, args.machine, args.keys, args.mib)
        return
    agents = []
    with loopback_site("cmdop-bench-terminal-", args.workers) as (scratch, cp, stack):
        big = big_file(scratch, args.mib)
        stack.callback(lambda: [a.close() for a in agents])
        print(f"bench/terminal.py: real control plane on loopback (gunicorn asgi, "
              f"{args.workers} worker(s), TLS 1.3; PostgreSQL, Redis), real cmdop-agent",
              flush=True)
        raised = "[limits]\noutput_rate_bytes = 268435456\noutput_buffer_bytes = 4194304\n"
        agents.append(_agent(cp, scratch / "agent", raised))
        measure(LoopbackTarget(agents[0]), f"cat {big}", args.keys, args.mib)


if __name__ == "__main__":
    main()
