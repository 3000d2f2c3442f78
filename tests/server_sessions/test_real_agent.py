"""The real cmdop-agent against the real control plane: gunicorn's asgi worker over TLS,
real PostgreSQL and Redis. Everything a person does goes through the user API (sessions,
input, resize, commands, files, the output cursor API); what the control plane recorded is
read back from its databases (session status, the audit log).
"""

from __future__ import annotations

import base64
import os
import re
import signal
from pathlib import Path

import pytest
from cmdop_server.audit.models import AuditEvent
from cmdop_server.sessions.models import Status

from tests.support.control_plane import ApiError, SessionOutput, until

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


def audit_rows(event: str, **data):
    rows = AuditEvent.objects.filter(event=event).order_by("id")
    return [r for r in rows if all(r.data.get(k) == v for k, v in data.items())]


def audited(event: str, what: str = "", **data) -> AuditEvent:
    return until(lambda: (audit_rows(event, **data) or [None])[0],
                 what=what or f"audit {event} {data}")


@pytest.fixture
def agent(control_plane, real_agent):
    a = real_agent(control_plane)
    a.start()
    return a


def test_the_real_agent_end_to_end(agent) -> None:
    """Enroll, heartbeat, a PTY through the user API, typed input, its echo through the
    cursor API, the session closed: the shell's exit is reported and recorded."""
    sid, out = agent.open_session()
    agent.api.type(sid, b"echo hello-$((6*7))\n")
    out.wait_for(b"hello-42")
    assert agent.api.call("POST", f"/sessions/{sid}/close", {})["status"] == "closed"
    audited("session.exited", session=sid)
    assert agent.session(sid).status == Status.CLOSED
    assert agent.stop() == 0, agent.log_text()


def test_resize_reaches_the_terminal(agent) -> None:
    sid, out = agent.open_session(cols=100, rows=30)
    agent.api.type(sid, b"stty size\n")
    out.wait_for(b"30 100")
    agent.api.resize(sid, 132, 43)
    mark = len(out.data)
    agent.api.type(sid, b"stty size\n")
    out.wait_for(b"43 132", start=mark)


def test_hostile_output_is_filtered_and_typed_replies_dropped(agent) -> None:
    sid, out = agent.open_session()
    # title set, OSC 52 clipboard write, a window report request: none leaves the agent
    agent.api.type(sid, b"printf '\\033]0;evil\\007\\033]52;c;eA==\\007\\033[21t<%s>\\n' ok\n")
    seen = out.wait_for(b"<ok>")
    assert b"\x1b]" not in seen and b"\x1b[21t" not in seen
    # colours pass unchanged
    agent.api.type(sid, b"printf '\\033[31m%s\\033[0m\\n' red\n")
    assert b"\x1b[31mred\x1b[0m" in out.wait_for(b"\x1b[31mred")
    # a typed-in terminal reply (cursor position report) is dropped by the input policy
    agent.api.type(sid, b"echo A\x1b[12;1RB\n")
    out.wait_for(b"AB")


def test_command_exit_code_and_duration_are_audited(agent) -> None:
    sid, out = agent.open_session()
    work_id = agent.api.command(sid, "grep NoNewPrivs /proc/self/status; sleep 0.3; exit 3")
    requested = audited("command.request", work_id=work_id)
    assert requested.user_id == agent.owner.pk and requested.data["session"] == sid
    ran = audited("command.executed", work_id=work_id)
    assert ran.data["exit_code"] == 3 and ran.data["duration_ms"] >= 300
    assert ran.data["command"].startswith("grep NoNewPrivs") and ran.success
    result = out.wait_record("command.result", work_id=work_id)
    assert result["exit_code"] == 3 and result["duration_ms"] == ran.data["duration_ms"]
    assert re.search(rb"NoNewPrivs:\s+1", base64.b64decode(result["stdout_b64"]))
    # the session's shell has no way to gain privileges either (setuid binaries stay inert)
    agent.api.type(sid, b"grep NoNewPrivs /proc/$$/status\n")
    out.wait_for(b"NoNewPrivs:\t1")


def test_operator_writes_and_reads_a_file(agent) -> None:
    sid, out = agent.open_session()
    target = agent.root / "notes.txt"
    wrote = agent.api.write_file(sid, str(target), b"hello\n")
    assert out.wait_record("file.result", work_id=wrote)["operation"] == "write"
    assert target.read_bytes() == b"hello\n"
    read = agent.api.read_file(sid, str(target))
    result = out.wait_record("file.result", work_id=read)
    assert base64.b64decode(result["data_b64"]) == b"hello\n" and result["path"] == str(target)
    for work_id, operation in ((wrote, "write"), (read, "read")):
        requested = audited("file.request", work_id=work_id)
        assert requested.data["path"] == str(target) and requested.user_id == agent.owner.pk
        done = audited("file.access", work_id=work_id)
        assert done.data["operation"] == operation and done.data["path"] == str(target)


def test_file_errors_reach_the_operator(control_plane, real_agent) -> None:
    agent = real_agent(control_plane, "[limits]\nfile_max_bytes = 1000\n")
    agent.start()
    sid, out = agent.open_session()
    target = agent.root / "kept.txt"
    target.write_bytes(b"kept\n")
    for path, code in [("/dev/zero", "not_regular_file"),
                       (str(agent.root / "missing"), "file_error")]:
        work_id = agent.api.read_file(sid, path)
        assert out.wait_record("work.error", work_id=work_id)["error"] == code
    # the control plane asks for up to 1 MiB; this agent's cap is lower: it reads up to its
    # cap and says the content is truncated
    long = agent.root / "long.txt"
    long.write_bytes(b"y" * 2000)
    read = out.wait_record("file.result", work_id=agent.api.read_file(sid, str(long)))
    assert read["truncated"] and base64.b64decode(read["data_b64"]) == b"y" * 1000
    big = agent.api.write_file(sid, str(target), b"x" * 1001)
    assert out.wait_record("work.error", work_id=big)["error"] == "file_too_large"
    assert target.read_bytes() == b"kept\n"
    assert audited("work.error", work_id=big).reason == "file_too_large"
    # what the control plane refuses itself never reaches the agent
    for path in ("relative.txt", "/etc/a\x00b", "/" + "a" * 5000):
        with pytest.raises(ApiError) as refused:
            agent.api.read_file(sid, path)
        assert refused.value.status in (400, 422)


def test_observer_is_refused_input_commands_writes_and_resize(agent) -> None:
    sid, out = agent.open_session()
    user, observer = agent.member()
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": user.pk, "role": "observer"})
    marker = agent.root / "observer-was-here"
    attempts = {
        "send_input": lambda: observer.type(sid, f"touch {marker}\n".encode()),
        "execute_command": lambda: observer.command(sid, f"touch {marker}"),
        "file_write": lambda: observer.write_file(sid, str(marker), b"x"),
        "resize_terminal": lambda: observer.resize(sid, 10, 10),
    }
    for permission, attempt in attempts.items():
        with pytest.raises(ApiError) as refused:
            attempt()
        assert refused.value.status == 403, permission
        row = audited("session.access", session=sid, permission=permission)
        assert not row.success and row.user_id == user.pk
        assert row.reason == f"observer_lacks_{permission}"
    # what an observer may do: read the output and read a file
    agent.api.type(sid, b"echo seen-by-$((1+1))\n")
    watcher = SessionOutput(observer, sid)
    watcher.wait_for(b"seen-by-2")
    readable = agent.root / "readable.txt"
    readable.write_text("open\n")
    work_id = observer.read_file(sid, str(readable))
    assert base64.b64decode(watcher.wait_record("file.result", work_id=work_id)["data_b64"]) \
        == b"open\n"
    # nothing the observer tried was carried out: the operator's command after them ran,
    # and the marker file does not exist
    done = agent.api.command(sid, "true")
    out.wait_record("command.result", work_id=done)
    assert not marker.exists()
    assert not audit_rows("command.request", session=sid, command=f"touch {marker}")


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


def test_the_agent_never_listens(agent) -> None:
    """Sampled while it works (a session with output, commands, file work): every socket
    the agent holds is an outbound connection, none listens (TCP, UDP or UNIX)."""
    sid, out = agent.open_session()
    pid = agent.proc.pid
    held: set[str] = set()
    for i in range(10):
        agent.api.type(sid, f"echo tick-{i}\n".encode())
        agent.api.command(sid, f"echo {i}")
        agent.api.read_file(sid, str(agent.home.config))
        sockets = _socket_inodes(pid)
        held |= sockets
        assert not sockets & _listening_inodes(), "the agent holds a listening socket"
    out.wait_for(b"tick-9")
    assert held, "the agent should hold its outbound connections"
    assert not _socket_inodes(pid) & _listening_inodes()


def _closed_by_server(pid: int) -> set[str]:
    """The agent's idle TCP connections that the server has closed: CLOSE_WAIT, or bytes
    waiting unread (a TLS close_notify: gunicorn's asyncio TLS shutdown sends it and keeps
    the TCP connection until the peer answers, up to 30 s)."""
    mine, closed = _socket_inodes(pid), set()
    for name in ("tcp", "tcp6"):
        for line in (Path("/proc/net") / name).read_text().splitlines()[1:]:
            f = line.split()
            unread = int(f[4].split(":")[1], 16)
            if f[9] in mine and (f[3] == "08" or unread):
                closed.add(f[9])
    return closed


def test_a_connection_closed_while_idle_is_replaced_without_a_retry(agent) -> None:
    """gunicorn closes a kept-alive connection after 2 s idle (nginx after 75 s). The
    agent's next request on it fails before any reply; the agent reconnects at once instead
    of reporting the control plane unreachable and backing off."""
    sid, out = agent.open_session()
    agent.api.type(sid, b"echo one-$((0+1))\n")
    out.wait_for(b"one-1")
    # both idle connections, the sender's and the heartbeat's (the poll's is in flight)
    until(lambda: len(_closed_by_server(agent.proc.pid)) >= 2, timeout=30,
          what="the server to close the agent's idle connections")
    mark = len(out.data)
    agent.api.type(sid, b"echo two-$((1+1))\n")
    out.wait_for(b"two-2", start=mark)
    assert "cannot reach" not in agent.log_text(tail=None), agent.log_text()


def test_sigterm_is_graceful(agent) -> None:
    """SIGTERM: the shells are hung up and their exit is delivered before the agent exits
    0, so the control plane has closed the session by then (no waiting for a sweep)."""
    sid, _ = agent.open_session()
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=60) == 0, agent.log_text()
    assert agent.session(sid).status == Status.CLOSED
    assert audit_rows("session.exited", session=sid)
