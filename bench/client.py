"""``cmdop`` as a person feels it: ``cmdop exec MACHINE -- true`` wall time, and
keystroke-to-echo inside ``cmdop connect``.

Loopback only, everything real and started here, stopped at the end (the same stack as
bench/pty.py: scratch PostgreSQL and Redis, the control plane under gunicorn's ``asgi``
worker over TLS 1.3, the real ``cmdop-agent``; user-API rate limits raised so the bench is
measured, not throttled).

- exec: the whole command as typed — a new Python process, TLS handshake, machine lookup,
  a session opened on the agent, the command run, its result read, the session closed;
  p50/p90 over ``--runs`` runs.
- keystroke-to-echo: ``cmdop connect`` runs on a pseudo-terminal of its own (raw mode, as in
  a real terminal); the remote shell runs ``cat``; one byte is written to the terminal and
  timed until its remote echo comes back out of ``cmdop``; p50/p99 over ``--keys`` keys.

    .venv/bin/python bench/client.py [--runs 50] [--keys 100]
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
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.pty import _agent, _percentile, loopback_site  # noqa: E402
from tests.support.control_plane import ControlPlane  # noqa: E402

CMDOP = [sys.executable, "-m", "cmdop_agent.client.cli"]


def _env(home: Path, cp: ControlPlane, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("CMDOP_")}
    return {**env, "HOME": str(home), "CMDOP_SERVER": cp.url, "CMDOP_CA": str(cp.pki.ca),
            "CMDOP_API_KEY": key}


def exec_times(env: dict[str, str], machine: str, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run([*CMDOP, "exec", machine, "--", "true"], env=env,
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


def keystrokes(env: dict[str, str], machine: str, n: int, warmup: int = 10) -> list[float]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen([*CMDOP, "connect", machine], env=env, stdin=slave, stdout=slave,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args()
    with loopback_site("cmdop-bench-client-") as (scratch, cp, stack):
        (scratch / "home").mkdir()
        agent = _agent(cp, scratch / "agent")
        stack.callback(agent.close)
        assert agent.machine is not None
        env = _env(scratch / "home", cp, agent.key)
        print("bench/client.py: real control plane on loopback (gunicorn asgi, 1 worker, "
              "TLS 1.3; PostgreSQL, Redis), real cmdop-agent, cmdop as a new process",
              flush=True)
        ms = sorted(exec_times(env, agent.machine.hostname, args.runs))
        print(f"cmdop exec MACHINE -- true: n={len(ms)}  p50={statistics.median(ms):.0f} ms  "
              f"p90={_percentile(ms, 0.9):.0f} ms  max={ms[-1]:.0f} ms", flush=True)
        started = time.perf_counter()
        subprocess.run([*CMDOP, "--version"], env=env, capture_output=True, check=True)
        print(f"  (of which starting Python and cmdop: "
              f"{(time.perf_counter() - started) * 1000:.0f} ms)", flush=True)
        keys = sorted(keystrokes(env, agent.machine.hostname, args.keys))
        print(f"keystroke-to-echo in cmdop connect: n={len(keys)}  "
              f"p50={statistics.median(keys):.1f} ms  p99={_percentile(keys, 0.99):.1f} ms  "
              f"max={keys[-1]:.1f} ms", flush=True)
        print(f"(machine load average over the last minute: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
