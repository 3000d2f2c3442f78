"""Backoff, the outbox's sequence numbers and backpressure accounting, the work journal."""

import base64
import random
from pathlib import Path

import pytest
from cmdop_agent.config import Limits
from cmdop_agent.errors import WorkError
from cmdop_agent.runtime import Backoff, Journal, Outbox
from cmdop_agent.work import Executor

pytestmark = pytest.mark.unit


def test_backoff_is_jittered_exponential_and_capped() -> None:
    b = Backoff(base=0.5, cap=120, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(40)]
    assert all(0 <= d <= 120 for d in delays)
    assert all(d <= 0.5 * 2**i for i, d in enumerate(delays[:8]))
    assert max(delays[10:]) > 60  # it does reach minutes
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, no lockstep
    b.reset()
    assert b.next_delay() <= 0.5


def test_many_agents_spread_out_after_a_restart() -> None:
    """No thundering herd: 1,000 agents on their 8th retry spread over the whole window."""
    firsts = []
    for seed in range(1000):
        b = Backoff(rng=random.Random(seed))
        for _ in range(7):
            b.next_delay()
        firsts.append(b.next_delay())
    buckets = [0] * 8
    for d in firsts:
        buckets[min(7, int(d / 64 * 8))] += 1
    assert min(buckets) > 60  # roughly uniform over 0..64 s


def test_outbox_numbers_confirms_and_accounts_output() -> None:
    box = Outbox()
    assert box.put({"type": "a"}) == 1
    assert box.put({"type": "session.output"}, session_id="s", output_bytes=100) == 2
    assert box.put({"type": "session.output"}, session_id="s", output_bytes=50) == 3
    assert box.pending_output("s") == 150
    assert [e["seq"] for e in box.batch(0)] == [1, 2, 3]
    box.confirm(2)
    assert box.pending_output("s") == 50
    assert [e["seq"] for e in box.batch(0)] == [3]
    box.confirm(2)  # a repeated confirmation changes nothing
    assert len(box) == 1
    box.confirm(3)
    assert box.wait_empty(0) and box.pending_output("s") == 0


def test_outbox_batches_are_bounded() -> None:
    box = Outbox()
    for _ in range(100):
        box.put({"type": "session.output", "data_b64": "x" * 10_000})
    batch = box.batch(0)
    assert 10 < len(batch) < 100


def test_journal_claims_once_and_survives_restart(tmp_path: Path) -> None:
    j = Journal(tmp_path / "state")
    assert j.claim("w_1") and not j.claim("w_1") and j.claim("w_2")
    j.close()
    assert (tmp_path / "state" / "work-journal").stat().st_mode & 0o777 == 0o600
    j2 = Journal(tmp_path / "state")
    assert not j2.claim("w_1") and not j2.claim("w_2") and j2.claim("w_3")


def test_journal_compacts_and_keeps_the_newest(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Journal, "KEEP", 5)
    j = Journal(tmp_path)
    for i in range(30):
        assert j.claim(f"w_{i}", durable=i % 2 == 0)
    j.close()
    lines = (tmp_path / "work-journal").read_text().split()
    assert len(lines) <= 10 and lines[-1] == "w_29"
    assert not Journal(tmp_path).claim("w_29")


def test_runaway_command_output_is_capped_and_killed(tmp_path: Path) -> None:
    ex = Executor(Limits(command_output_bytes=100_000, command_timeout=5), Outbox(),
                  Journal(tmp_path), sessions=None)  # type: ignore[arg-type]
    result = ex.run_command({"command": "yes", "cwd": str(tmp_path)})
    assert result["truncated"] and result["exit_code"] == -9
    assert len(base64.b64decode(result["stdout_b64"])) == 100_000
    slow = ex.run_command({"command": "sleep 30", "timeout": 0.5, "cwd": str(tmp_path)})
    assert slow["timed_out"] and slow["duration_ms"] < 5000


def test_streamed_command_output_is_filtered_per_stream_and_capped(tmp_path: Path) -> None:
    ex = Executor(Limits(command_output_bytes=100_000, command_timeout=5), Outbox(),
                  Journal(tmp_path), sessions=None)  # type: ignore[arg-type]
    shown: list[tuple[str, bytes]] = []

    def emit(stream: str, data: bytes) -> None:
        shown.append((stream, data))

    # stderr first: it is read before stdout can reach the cap (one read is 64 KiB); a title
    # sequence split across two writes (mostly two reads) is dropped whole
    command = ("echo err >&2; printf 'a\\033]0;ti'; sleep 0.2; printf 'tle\\007b\\n'; "
               "yes | head -c 200000")
    result = ex.run_command({"command": command, "cwd": str(tmp_path), "stream": True}, emit)
    out = b"".join(data for stream, data in shown if stream == "stdout")
    assert out.startswith(b"ab\ny\ny\n") and b"\x1b" not in out and b"title" not in out
    assert b"".join(data for stream, data in shown if stream == "stderr") == b"err\n"
    assert len(out) + len(b"err\n") + len(b"\x1b]0;title\x07") == 100_000  # the cap, in all
    assert result["truncated"] and result["stdout_b64"] == result["stderr_b64"] == ""
    # without "stream" the same executor keeps the output for the result
    whole = ex.run_command({"command": "echo whole", "cwd": str(tmp_path)}, emit)
    assert base64.b64decode(whole["stdout_b64"]) == b"whole\n" and len(shown) > 2


def test_outbox_size_tracks_queued_events() -> None:
    box = Outbox()
    box.put({"type": "command.result", "stdout_b64": "x" * 5000})
    box.put({"type": "command.result", "stdout_b64": "x" * 5000})
    assert box.size > 10_000 and not box.wait_below(10_000, timeout=0)
    box.confirm(1)
    assert box.wait_below(10_000, timeout=0)
    box.confirm(2)
    assert box.size == 0


def test_file_read_is_capped_by_the_agent_limit_not_refused(tmp_path: Path) -> None:
    """The control plane asks for up to 1 MiB by default; an agent whose site set a lower
    file limit reads up to its own limit and marks the content truncated."""
    ex = Executor(Limits(file_max_bytes=4), Outbox(), Journal(tmp_path / "state"),
                  sessions=None)  # type: ignore[arg-type]
    target = tmp_path / "f"
    target.write_bytes(b"0123456789")
    result = ex._file("file.read", {"path": str(target), "max_bytes": 1024 * 1024})
    assert result["truncated"] and base64.b64decode(result["data_b64"]) == b"0123"
    small = ex._file("file.read", {"path": str(target), "max_bytes": 2})
    assert small["truncated"] and base64.b64decode(small["data_b64"]) == b"01"
    target.write_bytes(b"abcd")
    whole = ex._file("file.read", {"path": str(target), "max_bytes": 1024 * 1024})
    assert not whole["truncated"] and base64.b64decode(whole["data_b64"]) == b"abcd"
    for bad in (0, -1, True, "10"):
        with pytest.raises(WorkError, match="max_bytes"):
            ex._file("file.read", {"path": str(target), "max_bytes": bad})
