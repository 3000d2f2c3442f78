"""``cmdop connect`` / ``cmdop join``: a remote terminal in the user's own terminal.

The local terminal is put in raw mode (every key, Ctrl-C included, goes to the remote shell)
and restored in a ``finally`` on every way out: the shell exits, the user detaches, an
error, SIGTERM/SIGHUP. Window size changes (SIGWINCH) are forwarded. ``Enter ~ .`` detaches
(as in ssh): the session stays on the machine in the background, ``cmdop join`` returns to it.

Keys, output and resizes go over the session's terminal WebSocket (the browser's, with the
API key or login token as a bearer), read in one loop with the keyboard. A control plane
older than that refuses the bearer's handshake with 403; then keys are one request each and
output is long-polled in a thread (``PollingTerminal``).
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

from ..ansi import AnsiFilter
from ..errors import AgentError, ServerError, TransportError
from ..websocket import Closed, WebSocket
from .userapi import MAX_INPUT_BYTES, Session

ESCAPE = b"~"
DETACH = b"."
DETACHED = -1
T = TypeVar("T")
# the server's close codes (cmdop_server.sessions.terminal)
CLOSE_ENDED, CLOSE_REFUSED, CLOSE_UNAUTHENTICATED = 4000, 4403, 4401
ENDED = ("closed", "disconnected")
# how often a login's access token is offered to the open socket (it refreshes 5 min early)
RENEW_SECONDS = 60.0


class Screen:
    """The user's own terminal, as the session's output reaches it: filtered here again by
    the agent's ANSI policy (cmdop_agent.ansi), since a compromised machine can forge its
    sessions' output and must not drive this terminal (clipboard writes, reports that make
    it answer as if typed). A terminal may take a large write in parts."""

    def __init__(self, fd: int) -> None:
        self.fd, self.filter = fd, AnsiFilter()

    def write(self, data: bytes) -> None:
        view = memoryview(self.filter.feed(data))
        while view:
            view = view[os.write(self.fd, view):]


class EscapeReader:
    """Finds ``~.`` at the start of a line in what the user types (ssh's escape); ``~~``
    sends one ``~``. Returns the bytes to forward and whether to detach."""

    def __init__(self) -> None:
        self.line_start = True
        self.pending = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        out = bytearray()
        for value in data:
            byte = bytes([value])
            if self.pending:
                self.pending = False
                if byte == DETACH:
                    return bytes(out), True
                if byte != ESCAPE:
                    out += ESCAPE
                out += byte
            elif self.line_start and byte == ESCAPE:
                self.pending = True
                continue
            else:
                out += byte
            self.line_start = byte in (b"\r", b"\n")
        return bytes(out), False


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode for the duration; the saved settings come back however the block ends
    (SIGTERM and SIGHUP become an exception so that the ``finally`` runs)."""
    saved = termios.tcgetattr(fd)

    def stop(signum: int, _frame: object) -> None:
        raise AgentError(f"stopped by signal {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        tty.setraw(fd, termios.TCSADRAIN)  # as ssh: keys typed ahead go to the remote shell
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for s, handler in previous.items():
            signal.signal(s, handler)


def patiently(call: Callable[[], T]) -> T:
    """An interactive terminal waits out the session rate limit (429) instead of ending:
    keys typed meanwhile stay in the terminal's buffer and go in the next request."""
    while True:
        try:
            return call()
        except ServerError as exc:
            if exc.status != 429:
                raise
            time.sleep(min(exc.retry_after or 1.0, 60.0))


def _code(value: object) -> int:
    return value if isinstance(value, int) else 255


def _exit_code_of(session: Session) -> int:
    """The exit code the session's row holds (it ended between two reads)."""
    ended = [s for s in session.api.sessions() if s["session_id"] == session.id]
    return _code(ended[0].get("exit_code") if ended else None)


class SocketTerminal:
    """One session on its terminal WebSocket: keys in, output out, one loop, until the shell
    exits, the server closes the socket or the user detaches."""

    def __init__(self, session: Session, ws: WebSocket, observe: bool) -> None:
        self.session, self.ws, self.observe = session, ws, observe
        self.exit_code: int | None = None
        self.refusal = ""  # the server's last refused record: why it closes, if it does
        self.token = session.api.bearer()
        self.throttled = False
        self.stdin, self.stdout = sys.stdin.fileno(), sys.stdout.fileno()
        self.screen = Screen(self.stdout)

    def _show(self, message: bytes | str) -> bool:
        """A message to the screen (or noted); True once the session has ended."""
        if isinstance(message, bytes):
            self.screen.write(message)
            return False
        try:
            item = json.loads(message)
        except ValueError:
            return False
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "status":
            if item.get("status") in ENDED:
                self.exit_code = _code(item.get("exit_code"))
                return True
            self.observe = self.observe or item.get("role") == "observer"
        elif kind == "refused":
            self.refusal = str(item.get("detail") or "")
        elif kind == "throttled" and not self.throttled:
            self.throttled = True  # said once: a paste over the byte rate loses its rest
            os.write(sys.stderr.fileno(),
                     f"\r\ncmdop: typing over the site's input rate: keys were dropped "
                     f"(retry in {item.get('retry_after', '?')} s)\r\n".encode())
        return False

    def _closed(self, closed: Closed) -> int:
        if closed.code == CLOSE_ENDED:
            if self.exit_code is not None:
                return self.exit_code
            if self.refusal:  # ended by the server: the idle timeout, say
                os.write(sys.stderr.fileno(), f"\r\ncmdop: {self.refusal}\r\n".encode())
            return _exit_code_of(self.session)
        if closed.code == CLOSE_UNAUTHENTICATED:
            if self.session.api.tokens is None:
                raise AgentError("the API key was refused (revoked or mistyped)")
            raise AgentError("the login expired or was revoked; run cmdop login")
        if closed.code == CLOSE_REFUSED:
            raise AgentError(f"refused: {self.refusal or closed.reason}")
        raise TransportError(f"lost the terminal connection to {self.session.api.settings.server}"
                             f" ({closed.code} {closed.reason})".rstrip())

    def _keys(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_INPUT_BYTES):
            self.ws.send_binary(data[start:start + MAX_INPUT_BYTES])

    def _renew(self) -> None:
        """A login's refreshed access token replaces the one the socket was opened with."""
        if self.session.api.tokens is None:
            return
        token = self.session.api.bearer()
        if token != self.token:
            self.ws.send_json({"type": "credential", "token": token})
            self.token = token

    def _resize(self) -> None:
        size = os.get_terminal_size(self.stdout)
        self.ws.send_json({"type": "resize", "cols": size.columns, "rows": size.lines})

    def run(self) -> int:
        """The remote shell's exit status, or DETACHED."""
        escape = EscapeReader()
        wake_r, wake_w = os.pipe()
        previous = signal.signal(signal.SIGWINCH, lambda _s, _f: os.write(wake_w, b"w"))
        try:
            with raw_terminal(self.stdin):
                renew_at = time.monotonic() + RENEW_SECONDS
                while True:
                    for message in self.ws.messages():
                        if self._show(message):
                            return self.exit_code if self.exit_code is not None else 255
                    ready, _, _ = select.select([self.stdin, self.ws.sock, wake_r], [], [],
                                                RENEW_SECONDS)
                    if self.ws.sock in ready:
                        self.ws.fill()
                    if wake_r in ready:
                        os.read(wake_r, 64)
                        if not self.observe:
                            self._resize()
                    if self.stdin in ready:
                        data = os.read(self.stdin, 4096)
                        keys, detach = escape.feed(data)
                        if keys and not self.observe:
                            self._keys(keys)
                        if detach or not data:
                            return DETACHED
                    if time.monotonic() >= renew_at:
                        self._renew()
                        renew_at = time.monotonic() + RENEW_SECONDS
        except Closed as closed:
            return self._closed(closed)
        finally:
            signal.signal(signal.SIGWINCH, previous)
            self.ws.close()
            os.close(wake_r)
            os.close(wake_w)


class PollingTerminal:
    """A control plane without the terminal socket for bearers: keys are one request each,
    output is long-polled in a thread, until the shell exits or the user detaches."""

    def __init__(self, session: Session, observe: bool) -> None:
        self.session = session
        self.observe = observe
        self.exit_code: int | None = None
        self.failure: BaseException | None = None
        self.wake_r, self.wake_w = os.pipe()
        self.stdin, self.stdout = sys.stdin.fileno(), sys.stdout.fileno()
        self.screen = Screen(self.stdout)

    def _pump_output(self) -> None:
        reader = Session(self.session.api.fork(), self.session.id)
        reader.cursor = self.session.cursor
        try:
            while True:
                items = patiently(reader.read)
                if self._show(items):
                    break
        except ServerError as exc:
            if exc.code != "session_not_active":
                self.failure = exc
            else:  # it ended between two reads: its output is closed, its end is listed
                self.exit_code = _exit_code_of(reader)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread to report
            self.failure = exc
        finally:
            reader.api.close()
            os.write(self.wake_w, b"x")

    def _show(self, items: list[dict]) -> bool:
        """Terminal bytes to the screen; True once the session has ended."""
        for item in items:
            if item["type"] == "output":
                self.screen.write(base64.b64decode(item["data_b64"]))
            elif item["type"] == "status" and item["status"] not in ("connected",
                                                                    "background"):
                self.exit_code = _code(item.get("exit_code"))
                return True
        return False

    def _resize(self) -> None:
        size = os.get_terminal_size(self.stdout)
        self.session.resize(size.columns, size.lines)

    def run(self) -> int:
        """The remote shell's exit status, or DETACHED."""
        threading.Thread(target=self._pump_output, daemon=True).start()
        escape = EscapeReader()
        winch = threading.Event()

        def on_winch(_signum: int, _frame: object) -> None:
            winch.set()
            os.write(self.wake_w, b"w")

        previous = signal.signal(signal.SIGWINCH, on_winch)
        try:
            with raw_terminal(self.stdin):
                while True:
                    ready, _, _ = select.select([self.stdin, self.wake_r], [], [])
                    if self.wake_r in ready:
                        os.read(self.wake_r, 64)
                        if self.failure is not None:
                            raise self.failure
                        if self.exit_code is not None:
                            return self.exit_code
                        if winch.is_set() and not self.observe:
                            winch.clear()
                            patiently(self._resize)
                    if self.stdin in ready:
                        data = os.read(self.stdin, 4096)
                        keys, detach = escape.feed(data)
                        if keys and not self.observe:
                            patiently(partial(self.session.send, keys))
                        if detach or not data:
                            return DETACHED
        finally:
            signal.signal(signal.SIGWINCH, previous)


def attach(session: Session, observe: bool) -> int:
    if not os.isatty(sys.stdin.fileno()):
        raise AgentError("connect needs a terminal on stdin (use cmdop exec for commands)")
    ws = patiently(session.terminal_socket)
    if ws is None:
        return PollingTerminal(session, observe).run()
    return SocketTerminal(session, ws, observe).run()
