"""``cmdop`` as a person feels it: ``cmdop exec MACHINE -- true`` wall time, and
keystroke-to-echo inside ``cmdop connect``.

Two targets, everything real:

- loopback (default): started here, stopped at the end (the same stack as bench/pty.py:
  scratch PostgreSQL and Redis, the control plane under gunicorn's ``asgi`` worker over TLS
  1.3, the real ``cmdop-agent``; user-API rate limits raised so the bench is measured, not
  throttled);
- ``--site DIR``: a deployed site (e.g. the demo's on lab hosts) through its nginx, with the
  site's own rate limits, on one of its agent hosts (``--machine``, else the first online).
  The site's name resolves only inside the lab, so each ``cmdop`` process resolves it to the
  control-plane host's address (what an /etc/hosts line does on a person's machine).

- exec: the whole command as typed — a new Python process, TLS handshake, machine lookup,
  a session opened on the agent, the command run, its result read, the session closed;
  p50/p90 over ``--runs`` runs.
- keystroke-to-echo: ``cmdop connect`` runs on a pseudo-terminal of its own (raw mode, as in
  a real terminal); the remote shell runs ``cat``; one byte is written to the terminal and
  timed until its remote echo comes back out of ``cmdop``; p50/p99 over ``--keys`` keys.
  Twice: on the session's terminal WebSocket (what cmdop uses), and one request per key
  with output long-polled (what it falls back to against an older control plane; here
  forced by a cmdop whose socket attach answers "older").

    .venv/bin/python bench/client.py [--runs 50] [--keys 100]
    .venv/bin/python bench/client.py --site sites/demo [--machine HOST]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pty import _agent, _percentile, loopback_site  # noqa: E402

CMDOP = [sys.executable, "-m", "cmdop_agent.client.cli"]
SITE_PACE = 4.0  # a deployed site's limits are its own: 15 runs a minute stay within them


def _env(home: Path, server: str, ca: Path, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("CMDOP_")}
    return {**env, "HOME": str(home), "CMDOP_SERVER": server, "CMDOP_CA": str(ca),
            "CMDOP_API_KEY": key}


def cmdop_as(resolve: tuple[str, str] | None = None, per_request: bool = False) -> list[str]:
    """``cmdop`` as a new process; ``resolve``: (domain, address) it resolves the site's name
    to; ``per_request``: its terminal never opens the socket (an older control plane's
    answer), so keys and output go by the per-request path."""
    code = "import socket, sys; "
    if resolve is not None:
        domain, address = resolve
        code += ("real = socket.getaddrinfo; "
                 f"socket.getaddrinfo = lambda host, *a, **k: real({address!r} "
                 f"if host == {domain!r} else host, *a, **k); ")
    if per_request:
        code += ("from cmdop_agent.client.userapi import Session; "
                 "Session.terminal_socket = lambda self: None; ")
    return [sys.executable, "-c", code + "from cmdop_agent.client.cli import main; "
            "sys.exit(main())"]


def exec_times(env: dict[str, str], machine: str, runs: int,
               cmdop: list[str] = CMDOP, pace: float = 0) -> list[float]:
    """``pace``: seconds between runs, untimed (a site's own rate limits: each run is about
    7 requests in nginx's session zone, 100 a minute per client address)."""
    samples = []
    for i in range(runs):
        if i and pace:
            time.sleep(pace)
        started = time.perf_counter()
        done = subprocess.run([*cmdop, "exec", machine, "--", "true"], env=env,
                              capture_output=True, timeout=120)
        samples.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0:
            raise SystemExit(f"cmdop exec failed: {done.stderr.decode().strip()}")
    return samples


def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise SystemExit(f"no {needle!r} from cmdop connect; got {bytes(seen[-300:])!r}")
        seen += os.read(fd, 65536)


def keystrokes(env: dict[str, str], machine: str, n: int, warmup: int = 10,
               cmdop: list[str] = CMDOP) -> list[float]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen([*cmdop, "connect", machine], env=env, stdin=slave, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    seen = bytearray()
    try:
        # READY-2 only once the shell ran the line: then cat holds the terminal in cooked
        # mode and the remote line discipline echoes each byte typed
        os.write(master, b"stty -echoctl; echo READY-$((1+1)); exec cat\r")
        _read_until(master, b"READY-2", seen)
        time.sleep(0.5)
        samples = []
        for i in range(warmup + n):
            key = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
            mark = len(seen)
            started = time.perf_counter()
            os.write(master, key)
            while key not in seen[mark:]:
                if not select.select([master], [], [], 30)[0]:
                    raise SystemExit("a keystroke's echo did not come back in 30 s")
                seen += os.read(master, 65536)
            if i >= warmup:
                samples.append((time.perf_counter() - started) * 1000)
        os.write(master, b"\r\x04")  # end cat: the session ends, cmdop returns
        proc.wait(timeout=30)
        return samples
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        os.close(master)


def measure(env: dict[str, str], machine: str, runs: int, keys: int,
            resolve: tuple[str, str] | None = None, pace: float = 0) -> None:
    cmdop = cmdop_as(resolve)
    ms = sorted(exec_times(env, machine, runs, cmdop, pace))
    print(f"cmdop exec MACHINE -- true: n={len(ms)}  p50={statistics.median(ms):.0f} ms  "
          f"p90={_percentile(ms, 0.9):.0f} ms  max={ms[-1]:.0f} ms", flush=True)
    started = time.perf_counter()
    subprocess.run([*cmdop, "--version"], env=env, capture_output=True, check=True)
    print(f"  (of which starting Python and cmdop: "
          f"{(time.perf_counter() - started) * 1000:.0f} ms)", flush=True)
    for path, argv in (("WebSocket", cmdop), ("per request", cmdop_as(resolve, True))):
        if pace:
            time.sleep(pace)
        ks = sorted(keystrokes(env, machine, keys, cmdop=argv))
        print(f"keystroke-to-echo in cmdop connect ({path}): n={len(ks)}  "
              f"p50={statistics.median(ks):.1f} ms  p99={_percentile(ks, 0.99):.1f} ms  "
              f"max={ks[-1]:.1f} ms", flush=True)
    print(f"(machine load average over the last minute: {os.getloadavg()[0]:.2f})")


def on_site(site_dir: Path, machine: str | None, runs: int, keys: int) -> None:
    from bench.deployed import deployed

    with deployed(site_dir, machine) as site, tempfile.TemporaryDirectory() as home:
        print(f"bench/client.py: deployed site {site.web.domain} through nginx on "
              f"{site.web.address} (TLS 1.3), agent host {site.machine['hostname']}; "
              "cmdop as a new process", flush=True)
        env = _env(Path(home), site.web.origin, site.ca, site.key)
        measure(env, site.machine["hostname"], runs, keys,
                (site.web.domain, site.web.address), SITE_PACE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--site", type=Path, help="a deployed site's folder instead of loopback")
    parser.add_argument("--machine", help="with --site: the agent host (default: first online)")
    args = parser.parse_args()
    if args.site:
        on_site(args.site, args.machine, args.runs, args.keys)
        return
    with loopback_site("cmdop-bench-client-") as (scratch, cp, stack):
        (scratch / "home").mkdir()
        agent = _agent(cp, scratch / "agent")
        stack.callback(agent.close)
        assert agent.machine is not None
        env = _env(scratch / "home", cp.url, cp.pki.ca, agent.key)
        print("bench/client.py: real control plane on loopback (gunicorn asgi, 1 worker, "
              "TLS 1.3; PostgreSQL, Redis), real cmdop-agent, cmdop as a new process",
              flush=True)
        measure(env, agent.machine.hostname, args.runs, args.keys)


if __name__ == "__main__":
    main()
