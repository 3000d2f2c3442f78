"""Carrying out work items: one function per work type, results as protocol events."""

from __future__ import annotations

import base64
import binascii
import os
import re
import selectors
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .ansi import AnsiFilter, filter_once
from .config import Limits
from .errors import WorkError
from .pty_session import SessionManager
from .runtime import Journal, Outbox
from .validate import sanitize_input, validate_command, validate_path, validate_size

WORK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_COMMANDS = 8
STREAMS = ("stdout", "stderr")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise WorkError("bad_payload", "data_b64 must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise WorkError("bad_payload", "data_b64 is not valid base64") from None


class Executor:
    def __init__(self, limits: Limits, outbox: Outbox, journal: Journal,
                 sessions: SessionManager) -> None:
        self.limits = limits
        self.outbox = outbox
        self.journal = journal
        self.sessions = sessions
        # Commands run concurrently up to this many; more wait their turn (each queued item
        # is at most COMMAND_MAX bytes, and the control plane paces what it sends).
        self._commands = ThreadPoolExecutor(max_workers=MAX_COMMANDS, thread_name_prefix="cmd")

    def handle(self, item: dict) -> str | None:
        """Run one work item (at most once per id); return its id for the ack."""
        work_id = item.get("id")
        if not isinstance(work_id, str) or not WORK_ID.fullmatch(work_id):
            return None  # not acknowledgeable; the control plane's bug, nothing to run
        kind = item.get("type")
        durable = kind in ("command.run", "file.write")
        if not self.journal.claim(work_id, durable=durable):
            return work_id  # redelivered: acknowledge again, never run twice
        payload = item.get("payload") or {}
        session_id = item.get("session_id")
        try:
            if not isinstance(payload, dict):
                raise WorkError("bad_payload", "payload must be an object")
            if kind == "command.run":
                self._commands.submit(self._command_thread, work_id, session_id, payload)
            elif kind in ("file.read", "file.write"):
                self.outbox.put({"type": "file.result", "work_id": work_id,
                                 "session_id": session_id, **self._file(kind, payload)})
            elif kind in ("session.open", "session.input", "session.resize", "session.close"):
                self._session(kind, work_id, session_id, payload)
            else:
                raise WorkError("unknown_type", f"unknown work type {kind!r}")
        except WorkError as exc:
            self.outbox.put({"type": "work.error", "work_id": work_id, "session_id": session_id,
                             "error": exc.code, "detail": exc.detail})
        return work_id

    def _session(self, kind: str, work_id: str, session_id: object, payload: dict) -> None:
        if not isinstance(session_id, str) or not WORK_ID.fullmatch(session_id):
            raise WorkError("bad_session", "session_id missing or malformed")
        if kind == "session.open":
            cols, rows = validate_size(payload.get("cols", 80), payload.get("rows", 24))
            session = self.sessions.open(session_id, cols, rows)
            self.outbox.put({"type": "session.opened", "session_id": session_id,
                             "work_id": work_id, "pid": session.pid})
        elif kind == "session.input":
            data = sanitize_input(_unb64(payload.get("data_b64")))
            if data:
                self.sessions.get(session_id).write(data)
        elif kind == "session.resize":
            self.sessions.get(session_id).resize(*validate_size(payload.get("cols"),
                                                                payload.get("rows")))
        else:
            self.sessions.close(session_id)

    def _command_thread(self, work_id: str, session_id: object, payload: dict) -> None:
        def emit(stream: str, data: bytes) -> None:
            self.outbox.put({"type": "command.output", "work_id": work_id,
                             "session_id": session_id, "stream": stream, "data_b64": _b64(data)})

        try:
            event = self.run_command(payload, emit)
        except WorkError as exc:
            event = {"type": "work.error", "error": exc.code, "detail": exc.detail}
        self.outbox.put({**event, "work_id": work_id, "session_id": session_id})

    def run_command(self, payload: dict,
                    emit: Callable[[str, bytes], None] | None = None) -> dict:
        """Run a command to its end. With ``"stream": true`` in the payload (and ``emit``),
        its output goes to ``emit`` as it is read, filtered per stream, and the result
        carries none; otherwise the result carries all of it."""
        command = validate_command(payload.get("command"))
        cwd = validate_path(payload.get("cwd") or os.path.expanduser("~"))
        timeout = payload.get("timeout", self.limits.command_timeout)
        if not isinstance(timeout, int | float) or not 0 < timeout <= self.limits.command_timeout:
            raise WorkError("bad_timeout",
                            f"timeout must be between 0 and {self.limits.command_timeout} s")
        cap = self.limits.command_output_bytes
        start = time.monotonic()
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            raise WorkError("spawn_failed", f"cannot start the command: {exc.strerror}") from None
        sink = None
        if emit is not None and payload.get("stream") is True:
            filters = (AnsiFilter(), AnsiFilter())

            def sink(index: int, data: bytes) -> None:
                shown = filters[index].feed(data)
                if shown:
                    emit(STREAMS[index], shown)

        out, truncated, timed_out = _collect(proc, cap, start + timeout, sink)
        code = proc.wait()
        return {"type": "command.result", "command": command, "exit_code": code,
                "duration_ms": round((time.monotonic() - start) * 1000),
                "stdout_b64": _b64(filter_once(out[0])), "stderr_b64": _b64(filter_once(out[1])),
                "truncated": truncated, "timed_out": timed_out}

    def _file(self, kind: str, payload: dict) -> dict:
        path = validate_path(payload.get("path"))
        limit = self.limits.file_max_bytes
        if kind == "file.read":
            max_bytes = payload.get("max_bytes", limit)
            if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
                raise WorkError("bad_payload", "max_bytes must be a positive integer")
            # The caller's ceiling and ours: a site may cap files below what the control
            # plane asks for by default; the reply then says it is truncated.
            data, truncated = _read_file(path, min(max_bytes, limit))
            return {"path": path, "operation": "read", "bytes": len(data),
                    "data_b64": _b64(data), "truncated": truncated}
        data = _unb64(payload.get("data_b64"))
        if len(data) > limit:
            raise WorkError("file_too_large", f"{len(data)} bytes, the limit is {limit}")
        _write_file(Path(path), data)
        return {"path": path, "operation": "write", "bytes": len(data), "truncated": False}


def _collect(proc: subprocess.Popen, cap: int, deadline: float,
             sink: Callable[[int, bytes], None] | None = None,
             ) -> tuple[list[bytes], bool, bool]:
    """Read stdout/stderr up to ``cap`` bytes in total; kill the command's group past the cap
    or the deadline, so a runaway command cannot fill the agent's memory. Each read goes to
    ``sink`` (0 stdout, 1 stderr) when there is one, else into the returned buffers."""
    bufs = [bytearray(), bytearray()]
    total = 0
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, 0)
    sel.register(proc.stderr, selectors.EVENT_READ, 1)
    truncated = timed_out = False
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in sel.select(min(left, 1.0)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            kept = chunk[:cap - total]
            total += len(kept)
            if sink is None:
                bufs[key.data] += kept
            elif kept:
                sink(key.data, kept)
            if len(kept) < len(chunk):
                truncated = True
        if truncated:
            break
    if truncated or timed_out:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sel.close()
    proc.stdout.close()
    proc.stderr.close()
    return [bytes(bufs[0]), bytes(bufs[1])], truncated, timed_out


def _read_file(path: str, max_bytes: int) -> tuple[bytes, bool]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise WorkError("file_error", f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WorkError("not_regular_file", f"{path} is not a regular file")
        data = f.read(max_bytes + 1)
    return data[:max_bytes], len(data) > max_bytes


def _write_file(path: Path, data: bytes) -> None:
    """Replace the file atomically, keeping the mode of an existing file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    except OSError as exc:
        raise WorkError("file_error", f"cannot write {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISREG(st.st_mode):
            raise WorkError("not_regular_file", f"{path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
    tmp = path.with_name(f".{path.name}.cmdop-{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WorkError("file_error", f"cannot write {path}: {exc.strerror}") from None


def _umask() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022
