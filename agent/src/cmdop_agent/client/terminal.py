"""``cmdop connect`` / ``cmdop join``: a remote terminal in the user's own terminal.

The local terminal is put in raw mode (every key, Ctrl-C included, goes to the remote shell)
and restored in a ``finally`` on every way out: the shell exits, the user detaches, an
error, SIGTERM/SIGHUP. Output is long-polled on a connection of its own in a thread; window
size changes (SIGWINCH) are forwarded. ``Enter ~ .`` detaches (as in ssh): the session stays
on the machine in the background, ``cmdop join`` returns to it.
"""

from __future__ import annotations

import base64
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

from ..errors import AgentError, ServerError
from .userapi import Session

ESCAPE = b"~"
DETACH = b"."
DETACHED = -1
T = TypeVar("T")


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


class Terminal:
    """Pumps one session: keys in, output out, until the shell exits or the user detaches."""

    def __init__(self, session: Session, observe: bool) -> None:
        self.session = session
        self.observe = observe
        self.exit_code: int | None = None
        self.failure: BaseException | None = None
        self.wake_r, self.wake_w = os.pipe()
        self.stdin, self.stdout = sys.stdin.fileno(), sys.stdout.fileno()

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
                ended = [s for s in reader.api.sessions() if s["session_id"] == reader.id]
                self.exit_code = _code(ended[0].get("exit_code") if ended else None)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread to report
            self.failure = exc
        finally:
            reader.api.close()
            os.write(self.wake_w, b"x")

    def _show(self, items: list[dict]) -> bool:
        """Terminal bytes to the screen; True once the session has ended."""
        for item in items:
            if item["type"] == "output":
                os.write(self.stdout, base64.b64decode(item["data_b64"]))
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
    return Terminal(session, observe).run()
