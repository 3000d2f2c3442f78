"""Interactive PTY sessions and the one thread that reads them.

Output limits: a session's unsent output (in the outbox) is capped at
``output_buffer_bytes`` and its read rate at ``output_rate_bytes`` per second (token bucket).
When either is exhausted the reader simply stops reading that PTY: the kernel's PTY buffer
fills and the program writing to it blocks. Memory stays bounded and nothing is dropped.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import os
import pwd
import select
import signal
import struct
import termios
import threading
import time

from .ansi import AnsiFilter
from .config import Limits
from .errors import WorkError
from .privileges import PR_SET_NO_NEW_PRIVS
from .runtime import Outbox

READ_CHUNK = 16 * 1024
# Under sustained output the rate cap's bucket refills continuously; reading whatever
# trickled in since the last read sent ~100-byte events at 1 MiB/s (a 20 MiB cat was
# 250,000 events and took 3 minutes through the control plane). Throttled, the reader waits
# for at least this much before it reads.
MIN_THROTTLED_READ = 4 * 1024
_LIBC = ctypes.CDLL(None, use_errno=True)


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock=time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self.tokens = burst
        self._last = clock()

    def available(self) -> int:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        return int(self.tokens)

    def take(self, n: int) -> None:
        self.tokens -= n


def user_shell() -> str:
    shell = os.environ.get("SHELL") or pwd.getpwuid(os.getuid()).pw_shell
    return shell if shell and os.access(shell, os.X_OK) else "/bin/sh"


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtySession:
    def __init__(self, session_id: str, cols: int, rows: int, limits: Limits,
                 outbox: Outbox) -> None:
        self.session_id = session_id
        self.outbox = outbox
        self.limits = limits
        self.filter = AnsiFilter()
        self.bucket = TokenBucket(limits.output_rate_bytes,
                                  min(limits.output_rate_bytes, 64 * 1024))
        self.bytes_out = 0
        self.min_read = min(MIN_THROTTLED_READ, int(self.bucket.burst),
                            limits.output_buffer_bytes)
        master, slave = os.openpty()
        _set_size(slave, cols, rows)
        shell = user_shell()
        env = {**os.environ, "TERM": "xterm-256color", "SHELL": shell}
        home = pwd.getpwuid(os.getuid()).pw_dir
        pid = os.fork()
        if pid == 0:  # child: become session leader with the PTY as controlling terminal
            try:
                os.close(master)
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                if slave > 2:
                    os.close(slave)
                # Inherited from the agent already; set again so a session started by other
                # code (tests) is covered too. The libc handle was bound before fork.
                _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
                try:
                    os.chdir(home)
                except OSError:
                    os.chdir("/")
                os.execve(shell, [shell], env)  # noqa: S606 - the user's own shell
            finally:
                os._exit(127)
        os.close(slave)
        os.set_blocking(master, False)
        self.pid = pid
        self.fd = master
        self.exit_code: int | None = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 5
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WorkError("input_blocked", "the session is not reading input") from None
                select.select([], [self.fd], [], 0.05)
            except OSError:
                raise WorkError("session_closed", "the session has ended") from None

    def resize(self, cols: int, rows: int) -> None:
        _set_size(self.fd, cols, rows)  # the kernel sends SIGWINCH to the foreground group

    def read_budget(self) -> int:
        """How much to read now: 0 while a cap holds less than ``min_read`` (the reader
        then looks again in 20 ms), so throttled output leaves in useful chunks."""
        room = self.limits.output_buffer_bytes - self.outbox.pending_output(self.session_id)
        budget = min(READ_CHUNK, room, self.bucket.available())
        return budget if budget >= self.min_read else 0

    def read_ready(self) -> bool:
        """Read what is there, up to the budget, as one event; False when the PTY has
        reached EOF (the shell exited). A PTY read returns at most what the line discipline
        holds (about 4 KiB), so a busy session is read several times into one event."""
        budget = self.read_budget()
        if budget <= 0:
            return True
        data, alive = bytearray(), True
        while len(data) < budget:
            try:
                chunk = os.read(self.fd, budget - len(data))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                alive = False
                break
            if not chunk:
                alive = False
                break
            data += chunk
        if data:
            self._emit(bytes(data))
        return alive

    def _emit(self, data: bytes) -> None:
        self.bucket.take(len(data))
        self.bytes_out += len(data)
        clean = self.filter.feed(data)
        if clean:
            self.outbox.put({"type": "session.output", "session_id": self.session_id,
                             "data_b64": base64.b64encode(clean).decode()},
                            session_id=self.session_id, output_bytes=len(data))

    def hangup(self, sig: int = signal.SIGHUP) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> int:
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 0
        self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code


class SessionManager:
    """Owns every PTY session and the reader thread that polls them."""

    def __init__(self, limits: Limits, outbox: Outbox) -> None:
        self.limits = limits
        self.outbox = outbox
        self._sessions: dict[str, PtySession] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pty-io", daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(self, session_id: str, cols: int, rows: int) -> PtySession:
        with self._lock:
            if session_id in self._sessions:
                raise WorkError("session_exists", f"session {session_id} is already open")
            if len(self._sessions) >= self.limits.max_sessions:
                raise WorkError("too_many_sessions",
                                f"{self.limits.max_sessions} sessions are already open")
            session = PtySession(session_id, cols, rows, self.limits, self.outbox)
            self._sessions[session_id] = session
        os.write(self._wake_w, b"x")
        return session

    def get(self, session_id: str) -> PtySession:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise WorkError("no_session", f"no open session {session_id}")
        return session

    def close(self, session_id: str) -> None:
        self.get(session_id).hangup()  # the reader reaps it and reports session.exited

    def close_all(self, sig: int = signal.SIGHUP) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.hangup(sig)

    def wait_all_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        registered: set[int] = set()
        while not self._stop.is_set():
            with self._lock:
                sessions = {s.fd: s for s in self._sessions.values()}
            throttled = False
            for fd, session in sessions.items():
                want = session.read_budget() > 0
                throttled |= not want
                if want and fd not in registered:
                    poller.register(fd, select.POLLIN)
                    registered.add(fd)
                elif not want and fd in registered:
                    poller.unregister(fd)
                    registered.discard(fd)
            for fd, _ in poller.poll(20 if throttled else 1000):
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                ready = sessions.get(fd)
                if ready is not None and not ready.read_ready():
                    poller.unregister(fd)
                    registered.discard(fd)
                    self._finish(ready)

    def _finish(self, session: PtySession) -> None:
        with self._lock:
            self._sessions.pop(session.session_id, None)
        code = session.reap()
        event: dict[str, object] = {"type": "session.exited", "session_id": session.session_id}
        event.update({"signal": -code} if code < 0 else {"exit_code": code})
        self.outbox.put(event)
