"""PTY sessions in process: echo, resize, and the output caps (backpressure, rate)."""

import base64
import time

import pytest
from cmdop_agent.config import Limits
from cmdop_agent.pty_session import MIN_THROTTLED_READ, READ_CHUNK, SessionManager
from cmdop_agent.runtime import Outbox

pytestmark = pytest.mark.integration


def output(box: Outbox, session_id: str) -> bytes:
    return b"".join(base64.b64decode(e["data_b64"]) for e in box.batch(0)
                    if e.get("session_id") == session_id and e["type"] == "session.output")


def wait_for(box: Outbox, session_id: str, needle: bytes, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = output(box, session_id)
        if needle in out:
            return out
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} not in {output(box, session_id)[-300:]!r}")


@pytest.fixture
def manager(monkeypatch):
    monkeypatch.setenv("SHELL", "/bin/sh")
    box = Outbox()
    mgr = SessionManager(Limits(output_buffer_bytes=32 * 1024, output_rate_bytes=200_000), box)
    yield mgr, box
    mgr.close_all()
    time.sleep(0.1)
    mgr.stop()


def test_echo_and_resize(manager) -> None:
    mgr, box = manager
    session = mgr.open("s", 80, 24)
    session.write(b"echo hel''lo\n")
    wait_for(box, "s", b"hello")
    session.resize(100, 30)
    session.write(b"stty size\n")
    wait_for(box, "s", b"30 100")


def test_runaway_output_stops_at_the_buffer_cap(manager) -> None:
    mgr, box = manager
    session = mgr.open("y", 80, 24)
    session.write(b"yes\n")
    time.sleep(1.5)
    first = session.bytes_out
    time.sleep(1.0)
    # nothing was confirmed by a control plane: the reader stopped, `yes` is blocked
    assert session.bytes_out == first
    assert box.pending_output("y") <= 32 * 1024 + READ_CHUNK
    # draining resumes reading, at no more than the rate cap
    start, t0 = session.bytes_out, time.monotonic()
    while time.monotonic() - t0 < 2.0:
        box.confirm(10**9)
        time.sleep(0.01)
    rate = (session.bytes_out - start) / (time.monotonic() - t0)
    assert 50_000 < rate <= 200_000 * 1.1 + 64 * 1024 / 2
    session.write(b"\x03")


def test_session_count_is_capped(monkeypatch) -> None:
    from cmdop_agent.errors import WorkError

    monkeypatch.setenv("SHELL", "/bin/sh")
    mgr = SessionManager(Limits(max_sessions=2), Outbox())
    try:
        mgr.open("a", 80, 24)
        mgr.open("b", 80, 24)
        with pytest.raises(WorkError, match="2 sessions"):
            mgr.open("c", 80, 24)
        with pytest.raises(WorkError, match="already open"):
            mgr.open("a", 80, 24)
    finally:
        mgr.close_all()
        time.sleep(0.1)
        mgr.stop()


def test_session_shell_has_no_new_privs_even_from_a_plain_process(manager) -> None:
    mgr, box = manager
    session = mgr.open("n", 80, 24)
    session.write(b"grep NoNewPrivs /proc/$$/status\n")
    wait_for(box, "n", b"NoNewPrivs:\t1")


def test_throttled_output_leaves_in_useful_chunks(manager) -> None:
    """At the rate cap the reader waits for a few KiB instead of reading the trickle that
    refilled since its last read (which made thousands of ~100-byte events a second)."""
    mgr, box = manager
    session = mgr.open("c", 80, 24)
    session.write(b"yes | head -c 300000; echo END-$((40+2))\n")
    sizes: list[int] = []
    tail = b""
    deadline = time.monotonic() + 30
    while b"END-42" not in tail:
        assert time.monotonic() < deadline, "the output did not finish"
        batch = box.batch(0.1)
        for event in batch:
            if event["type"] == "session.output":
                data = base64.b64decode(event["data_b64"])
                sizes.append(len(data))
                tail = (tail + data)[-64:]
        if batch:
            box.confirm(batch[-1]["seq"])  # as the control plane would
    assert sum(sizes) > 300_000
    # 300 kB at 200 kB/s through a 32 KiB buffer: chunks of at least 4 KiB, bar a few
    small = [n for n in sizes if n < MIN_THROTTLED_READ]
    assert len(small) <= 5, (len(sizes), sorted(sizes)[:20])
