"""The agent as a real process against the TEST-ONLY stand-in control plane (agent_standin.py).

These move to the real control plane (issue 5) when its agent endpoints exist.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def type_(standin, session: str, text: bytes) -> None:
    standin.push("session.input", session, data_b64=b64(text))


def test_pty_echo_resize_filter_and_close(running_agent, standin) -> None:
    standin.push("session.open", "s_1", cols=80, rows=24)
    opened = standin.event("session.opened", session_id="s_1")
    assert opened["pid"] > 0
    type_(standin, "s_1", b"echo $((6*7))\n")
    standin.wait_output("s_1", b"42")
    standin.push("session.resize", "s_1", cols=132, rows=43)
    type_(standin, "s_1", b"stty size\n")
    standin.wait_output("s_1", b"43 132")
    # a hostile program's title/clipboard/report sequences never leave the agent
    type_(standin, "s_1", b"printf '\\033]0;evil\\007\\033]52;c;eA==\\007\\033[21t<%s>\\n' ok\n")
    out = standin.wait_output("s_1", b"<ok>")
    assert b"\x1b]" not in out and b"\x1b[21t" not in out
    # a typed-in terminal reply (cursor position report) is dropped by the input policy
    type_(standin, "s_1", b"echo A\x1b[12;1RB\n")
    standin.wait_output("s_1", b"AB")
    standin.push("session.close", "s_1")
    exited = standin.event("session.exited", session_id="s_1")
    assert "exit_code" in exited or "signal" in exited


def test_command_reports_exit_code_duration_and_no_new_privs(running_agent, standin) -> None:
    work = standin.push("command.run", command="grep NoNewPrivs /proc/self/status; exit 3")
    result = standin.event("command.result", work_id=work)
    assert result["exit_code"] == 3
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0
    assert re.search(rb"NoNewPrivs:\s+1", base64.b64decode(result["stdout_b64"]))
    # the shell of a PTY session inherits it too
    standin.push("session.open", "s_2")
    standin.event("session.opened", session_id="s_2")
    type_(standin, "s_2", b"grep NoNewPrivs /proc/$$/status\n")
    assert re.search(rb"NoNewPrivs:\s+1", standin.wait_output("s_2", b"NoNewPrivs:\t1"))


def test_file_read_write_and_refusals(running_agent, standin, home) -> None:
    target = home.root / "notes.txt"
    w = standin.push("file.write", path=str(target), data_b64=b64(b"hello\n"))
    assert standin.event("file.result", work_id=w)["operation"] == "write"
    assert target.read_bytes() == b"hello\n"
    r = standin.push("file.read", path=str(target))
    result = standin.event("file.result", work_id=r)
    assert base64.b64decode(result["data_b64"]) == b"hello\n" and result["path"] == str(target)
    for payload, code in [
        ({"path": "relative.txt"}, "bad_path"),
        ({"path": "/etc/a\x00b"}, "bad_path"),
        ({"path": "/" + "a" * 5000}, "bad_path"),
        ({"path": "/dev/zero"}, "not_regular_file"),
        ({"path": str(home.root / "missing")}, "file_error"),
    ]:
        w = standin.push("file.read", **payload)
        assert standin.event("work.error", work_id=w)["error"] == code
    big = standin.push("file.write", path=str(target), data_b64=b64(b"x" * (1024 * 1024 + 1)))
    assert standin.event("work.error", work_id=big)["error"] == "file_too_large"
    assert target.read_bytes() == b"hello\n"
    nul = standin.push("command.run", command="echo a\x00b")
    assert standin.event("work.error", work_id=nul)["error"] == "bad_command"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _listening_inodes() -> set[str]:
    listening = set()
    for name in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            f = line.split()
            # TCP state 0A is LISTEN; an unconnected UDP socket (07 with no peer) receives
            if f[3] == "0A" or (name.startswith("udp") and f[2].endswith(":0000")):
                listening.add(f[9])
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[3], 16) & 0x10000:  # __SO_ACCEPTCON: a listening UNIX socket
            listening.add(f[6])
    return listening


def test_agent_never_listens(running_agent, standin) -> None:
    standin.push("session.open", "s_3")
    standin.event("session.opened", session_id="s_3")
    for i in range(20):
        type_(standin, "s_3", f"echo tick{i}\n".encode())
        standin.push("command.run", command=f"echo {i}")
        sockets = _socket_inodes(running_agent.pid)
        assert sockets, "the agent should hold its outbound connections"
        assert not sockets & _listening_inodes()
        time.sleep(0.05)
    standin.wait_output("s_3", b"tick19")


def test_runaway_output_is_bounded_by_backpressure(home, standin) -> None:
    text = home.config.read_text() + "[limits]\noutput_buffer_bytes = 65536\n"
    home.config.write_text(text)
    assert home.cli("enroll", "--token", "jt_good").returncode == 0
    proc = home.start()
    try:
        standin.push("session.open", "s_yes")
        standin.event("session.opened", session_id="s_yes")
        standin.state.stall_events = True
        type_(standin, "s_yes", b"yes\n")
        time.sleep(1.0)
        rss_start = _rss_kib(proc.pid)
        time.sleep(3.0)
        rss_end = _rss_kib(proc.pid)
        assert rss_end - rss_start < 4096, (rss_start, rss_end)  # no growth beyond noise
        standin.state.stall_events = False
        standin.wait_output("s_yes", b"y\r\ny\r\n")
        type_(standin, "s_yes", b"\x03")
        type_(standin, "s_yes", b"echo done-$((1+1))\n")
        standin.wait_output("s_yes", b"done-2", timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        proc.stdout.close()
        proc.stderr.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


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


def test_reconnects_after_outage_within_backoff_bound(running_agent, standin) -> None:
    standin.state.fail_requests = 6
    started = time.monotonic()
    w = standin.push("command.run", command="echo back")
    standin.event("command.result", work_id=w, timeout=60)
    # six failures at full jitter: at most 0.5+1+2+4+8+16 s of waiting, usually far less
    assert time.monotonic() - started < 32


def test_sigterm_is_graceful(running_agent, standin) -> None:
    standin.push("session.open", "s_t")
    standin.event("session.opened", session_id="s_t")
    running_agent.send_signal(signal.SIGTERM)
    assert running_agent.wait(timeout=15) == 0
    standin.event("session.exited", session_id="s_t")


def test_control_plane_killed_mid_session(running_agent, standin, home) -> None:
    """The stand-in dies (listener and connections) and comes back: the agent reconnects
    within its backoff bound, output produced meanwhile arrives once, no input runs twice."""
    log = home.root / "typed.log"
    standin.push("session.open", "s_k")
    standin.event("session.opened", session_id="s_k")
    type_(standin, "s_k", f"echo typed >> {log}; (sleep 1; echo during-$((3*3))) &\n".encode())
    standin.wait_output("s_k", b"typed")
    standin.kill()
    time.sleep(3)
    standin.revive()
    revived = time.monotonic()
    type_(standin, "s_k", b"echo after-$((2+2))\n")
    out = standin.wait_output("s_k", b"after-4", timeout=40)
    assert time.monotonic() - revived < 35  # a backoff of a few attempts, not a hang
    assert out.count(b"during-9") == 1
    assert log.read_text() == "typed\n"
    seqs = [e["seq"] for e in standin.state.events]
    assert seqs == list(range(1, len(seqs) + 1))


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
