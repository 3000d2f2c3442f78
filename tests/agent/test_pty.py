"""PTY sessions in process: echo, resize, and the output caps (backpressure, rate)."""

import base64
import time

import pytest
from cmdop_agent import pty_session
from cmdop_agent.config import Limits
from cmdop_agent.pty_session import (
    MIN_THROTTLED_READ,
    SessionManager,
    TokenBucket,
)
from cmdop_agent.runtime import Outbox

from tests.support.control_plane import until

pytestmark = pytest.mark.integration


def output(box: Outbox, session_id: str) -> bytes:
    return b"".join(base64.b64decode(e["data_b64"]) for e in box.batch(0)
                    if e.get("session_id") == session_id and e["type"] == "session.output")


def wait_for(box: Outbox, session_id: str, needle: bytes, timeout: float = 30) -> bytes:
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


def test_runaway_output_stops_at_the_buffer_cap_and_drains_at_the_rate_cap(
        manager, monkeypatch) -> None:
    """The rate cap runs on a clock the test moves, so what the reader may have read is
    known exactly at every step: no wall-clock window to measure on a busy machine."""
    mgr, box = manager
    now = [0.0]
    monkeypatch.setattr(pty_session, "TokenBucket",
                        lambda rate, burst: TokenBucket(rate, burst, clock=lambda: now[0]))
    session = mgr.open("y", 80, 24)
    burst, rate, cap = 64 * 1024, 200_000, 32 * 1024  # the fixture's limits

    def allowed() -> float:
        return burst + rate * now[0]

    session.write(b"yes\n")
    # nothing is confirmed by a control plane: the reader fills the buffer cap, then stops
    until(lambda: box.pending_output("y") >= cap - MIN_THROTTLED_READ, what="a full buffer")
    assert box.pending_output("y") <= cap
    # draining resumes reading, but never past what the bucket has granted; each step
    # grants 12,500 bytes (1/16 s of the rate cap, exact in binary)
    for _ in range(8):
        now[0] += 1 / 16

        def drained() -> bool:
            box.confirm(10**9)
            return session.bytes_out > allowed() - session.min_read

        until(drained, what=f"the reader to use its grant ({allowed():.0f} bytes)",
              interval=0.01)
        assert session.bytes_out <= allowed()
        assert box.pending_output("y") <= cap
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


def test_a_throttled_reader_waits_for_a_useful_chunk(manager) -> None:
    """At the rate cap the bucket refills continuously; the reader does not read the trickle
    that came in since its last read (that was a flood of ~100-byte events)."""
    mgr, _ = manager
    session = mgr.open("t", 80, 24)
    now = [0.0]
    session.bucket = TokenBucket(1_000_000, 64 * 1024, clock=lambda: now[0])
    session.bucket.take(64 * 1024)  # a burst of output drained it
    now[0] += 0.0001  # 100 bytes' worth
    assert session.read_budget() == 0
    now[0] += 0.005  # 5 kB more
    assert session.read_budget() >= MIN_THROTTLED_READ


def test_a_busy_pty_is_read_into_one_event(manager) -> None:
    """One PTY read returns at most what the line discipline holds (~4 KiB): output that
    piled up while the reader was held back leaves in events of up to READ_CHUNK."""
    mgr, box = manager
    session = mgr.open("b", 80, 24)
    session.write(b"yes\n")
    # nothing confirmed: the reader stops near the 32 KiB cap and `yes` fills the PTY
    deadline = time.monotonic() + 20
    while box.pending_output("b") < 32 * 1024 - MIN_THROTTLED_READ:
        assert time.monotonic() < deadline, "the buffer did not fill"
        time.sleep(0.02)
    box.confirm(10**9)  # delivered: the reader goes on, with a full PTY to drain

    def sizes() -> list[int]:
        return [len(base64.b64decode(e["data_b64"])) for e in box.batch(0)
                if e["type"] == "session.output"]

    deadline = time.monotonic() + 20
    while sum(sizes()) < 16 * 1024:
        assert time.monotonic() < deadline, f"no output after the confirmation: {sizes()}"
        time.sleep(0.02)
    assert max(sizes()) > 4096, sizes()
    session.write(b"\x03")
