"""The agent as a real process against a control plane that misbehaves: the TEST-ONLY
stand-in (agent_standin.py) told to stop taking events, to lose its replies, to deliver an
acknowledged item again, to refuse one event type. The real control plane does none of
that on purpose; everything it does do is tested against it, in
tests/server_sessions/test_real_agent*.py.
"""

from __future__ import annotations

import base64
import signal
import time
from pathlib import Path

import pytest

from tests.support.control_plane import until

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def type_(standin, session: str, text: bytes) -> None:
    standin.push("session.input", session, data_b64=b64(text))


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _descendant(pid: int, name: str) -> int | None:
    """A process called ``name`` below ``pid`` (the agent → its shell → the command)."""
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == name:
                    return child
            except OSError:
                continue
            todo.append(child)
    return None


def _written(pid: int) -> int:
    """Bytes ``pid`` has written so far (its /proc io counter)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar")


def _stopped_writing(pid: int, samples: int = 4, every: float = 0.25):
    """A predicate: true once ``pid``'s write counter has not moved for ``samples`` looks
    in a row (it is blocked on a full PTY); returns the counter."""
    seen: list[int] = []

    def check():
        seen.append(_written(pid))
        time.sleep(every)
        return seen[-1] if len(seen) >= samples and len(set(seen[-samples:])) == 1 else None
    return check


def test_runaway_output_is_bounded_by_backpressure(home, standin) -> None:
    """The control plane stops taking events (503 to every batch) while `yes` runs: the
    agent stops reading the PTY once its buffer cap is unsent, so `yes` blocks on the full
    PTY after writing no more than the cap plus what the kernel holds. When events are taken
    again the output flows and the session still answers."""
    home.config.write_text(home.config.read_text() + "reconnect_max_delay = 1\n"
                           "[limits]\noutput_buffer_bytes = 65536\n")
    assert home.cli("enroll", "--token", "jt_good").returncode == 0
    proc = home.start()
    try:
        standin.push("session.open", "s_yes")
        standin.event("session.opened", session_id="s_yes")
        standin.state.stall_events = True
        type_(standin, "s_yes", b"yes\n")
        yes = until(lambda: _descendant(proc.pid, "yes"), timeout=30, what="yes to start")
        written = until(_stopped_writing(yes), timeout=30,
                        what="yes to block on the full PTY")
        # the agent's 64 KiB cap + one read + the kernel's PTY buffers; unbounded, `yes`
        # would have written megabytes by now (the read rate cap is 1 MiB/s)
        assert written < 512 * 1024, written
        assert proc.poll() is None
        standin.state.stall_events = False
        standin.wait_output("s_yes", b"y\r\ny\r\n", timeout=30)
        type_(standin, "s_yes", b"\x03")
        type_(standin, "s_yes", b"echo done-$((1+1))\n")
        standin.wait_output("s_yes", b"done-2", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def test_lost_replies_and_redelivery_never_duplicate(running_agent, standin, home) -> None:
    log = home.root / "ran.log"
    standin.state.lose_events_replies = 2
    first = standin.push("command.run", command=f"echo once >> {log}")
    standin.event("command.result", work_id=first)
    standin.redeliver(first)
    marker = standin.push("command.run", command="true")
    standin.event("command.result", work_id=marker)
    assert standin.state.delivered.count(first) >= 2
    assert log.read_text() == "once\n"
    assert standin.state.duplicate_events >= 1  # retried batches arrived again, dropped
    seqs = [e["seq"] for e in standin.state.events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert sum(1 for e in standin.state.events if e.get("work_id") == first) == 1


def test_journal_survives_restart(home, standin) -> None:
    log = home.root / "ran.log"
    assert home.cli("enroll", "--token", "jt_good").returncode == 0
    proc = home.start()
    w = standin.push("command.run", command=f"echo once >> {log}")
    standin.event("command.result", work_id=w)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    standin.redeliver(w)
    proc = home.start()
    marker = standin.push("command.run", command="true")
    standin.event("command.result", work_id=marker)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert log.read_text() == "once\n"


def test_an_event_the_server_refuses_does_not_block_the_rest(running_agent, standin,
                                                             home) -> None:
    standin.state.refuse_event_type = "file.result"
    bad = standin.push("file.read", path=str(home.config))
    good = standin.push("command.run", command="echo later")
    standin.event("command.result", work_id=good)
    dropped = standin.event("agent.dropped", work_id=bad)
    assert dropped["dropped_type"] == "file.result" and "422" in dropped["detail"]
    seqs = [e["seq"] for e in standin.state.events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert running_agent.poll() is None  # still running
