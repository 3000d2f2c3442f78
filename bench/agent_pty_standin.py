"""Keystroke-to-echo and PTY output throughput of the agent through the TEST-ONLY stand-in.

This is NOT bench/pty.py (issue 6's measurement through the real control plane): the
control plane's agent endpoints do not exist yet, so this runs the real agent process
against tests/agent/agent_standin.py on loopback (TLS 1.3). It measures the agent's share
of the round trip: long-poll delivery → PTY write → shell echo → ANSI filter → event POST.

Run: `.venv/bin/python bench/agent_pty_standin.py [--keys 200] [--mib 20]`
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "agent"))

from agent_home import AgentHome, write_config  # noqa: E402
from agent_standin import StandIn, make_ca, make_leaf  # noqa: E402


class Reader:
    """Reads a session's output incrementally from the stand-in's accepted events."""

    def __init__(self, standin: StandIn, session: str) -> None:
        self.standin, self.session, self.index, self.buf = standin, session, 0, bytearray()

    def pump(self) -> None:
        with self.standin.cond:
            events = self.standin.state.events
            while self.index < len(events):
                e = events[self.index]
                self.index += 1
                if e["type"] == "session.output" and e["session_id"] == self.session:
                    self.buf += base64.b64decode(e["data_b64"])

    def wait(self, needle: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError(needle)
            with self.standin.cond:
                self.standin.cond.wait(0.01)
            self.pump()


def keystrokes(standin: StandIn, n: int) -> list[float]:
    standin.push("session.open", "k", cols=200, rows=50)
    standin.event("session.opened", session_id="k")
    reader = Reader(standin, "k")
    standin.push("session.input", "k", data_b64=base64.b64encode(b"stty -echoctl; cat\n").decode())
    time.sleep(0.5)
    reader.pump()
    samples = []
    for i in range(n):
        key = "abcdefghijklmnopqrstuvwxyz"[i % 26].encode()
        mark = len(reader.buf)
        started = time.perf_counter()
        standin.push("session.input", "k", data_b64=base64.b64encode(key).decode())
        while key not in reader.buf[mark:]:
            with standin.cond:
                standin.cond.wait(0.005)
            reader.pump()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def throughput(standin: StandIn, home: Path, mib: int) -> float:
    big = home / "big.txt"
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\n"
    big.write_bytes(line * (mib * 1024 * 1024 // len(line)))
    standin.push("session.open", "t", cols=200, rows=50)
    standin.event("session.opened", session_id="t")
    reader = Reader(standin, "t")
    started = time.perf_counter()
    cmd = f"cat {big}; echo END-$((40+2))\n".encode()
    standin.push("session.input", "t", data_b64=base64.b64encode(cmd).decode())
    reader.wait(b"END-42", timeout=600)
    return len(reader.buf) / (time.perf_counter() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--mib", type=int, default=20)
    parser.add_argument("--rate", type=int, default=1024 * 1024,
                        help="output_rate_bytes for the throughput run (the agent's cap)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cmdop-bench-"))
    ca, ca_key, ca_cert = make_ca(root, "bench-ca")
    cert, key = make_leaf(root, ca_key, ca_cert)
    standin = StandIn(cert, key)
    standin.state.join_tokens["jt"] = time.time() + 600
    config = write_config(root, standin.url, ca,
                          f"[limits]\noutput_rate_bytes = {args.rate}\n"
                          "output_buffer_bytes = 1048576\n")
    home = AgentHome(root, config, config.parent / "credential.json")
    assert home.cli("enroll", "--token", "jt").returncode == 0
    proc = home.start()
    try:
        time.sleep(1)
        ms = sorted(keystrokes(standin, args.keys))
        p50, p99 = statistics.median(ms), ms[int(len(ms) * 0.99) - 1]
        print(f"keystroke-to-echo via stand-in: n={len(ms)} p50={p50:.2f} ms "
              f"p99={p99:.2f} ms max={ms[-1]:.2f} ms")
        mbs = throughput(standin, root, args.mib)
        print(f"PTY output throughput via stand-in: {mbs:.2f} MB/s "
              f"({args.mib} MiB cat, output_rate_bytes={args.rate})")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        standin.close()
        os.system(f"rm -rf {root}")  # noqa: S605 - our own temp dir


if __name__ == "__main__":
    main()
