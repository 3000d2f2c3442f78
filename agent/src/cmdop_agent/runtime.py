"""Delivery machinery: the event outbox (sequence numbers), the work journal, backoff."""

from __future__ import annotations

import os
import random
import threading
from collections import OrderedDict, deque
from pathlib import Path
from typing import TextIO

from .files import ensure_private_dir, write_private

BATCH_MAX_BYTES = 256 * 1024


def event_size(event: dict) -> int:
    """Encoded size estimate, used for batch limits (base64 grows data by 4/3)."""
    return 64 + sum(len(k) + (len(v) if isinstance(v, str) else 16) for k, v in event.items())


class Outbox:
    """Events waiting for the control plane, numbered 1, 2, … per boot (the protocol's seq).

    An event leaves the outbox only when the control plane confirms it (``accepted_through``),
    so a lost response is retried with the same seq and the server drops the duplicate.
    Output bytes still in the outbox count against their session's buffer cap: that is what
    makes the PTY reader stop reading (backpressure).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: deque[tuple[int, dict, str | None, int]] = deque()
        self._next_seq = 1
        self._pending: dict[str, int] = {}
        self.size = 0  # encoded bytes of all queued events

    def wait_below(self, limit: int, timeout: float) -> bool:
        """Block while the outbox holds ``limit`` bytes or more (the poller's backpressure)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.size < limit, timeout)

    def put(self, event: dict, session_id: str | None = None, output_bytes: int = 0) -> int:
        with self._cond:
            seq = self._next_seq
            self._next_seq += 1
            full = {"seq": seq, **event}
            self._events.append((seq, full, session_id, output_bytes))
            self.size += event_size(full)
            if session_id is not None:
                self._pending[session_id] = self._pending.get(session_id, 0) + output_bytes
            self._cond.notify_all()
            return seq

    def pending_output(self, session_id: str) -> int:
        with self._cond:
            return self._pending.get(session_id, 0)

    def __len__(self) -> int:
        with self._cond:
            return len(self._events)

    def batch(self, timeout: float) -> list[dict]:
        """Up to BATCH_MAX_BYTES of the oldest events, waiting up to ``timeout`` for one."""
        with self._cond:
            if not self._events:
                self._cond.wait(timeout)
            out: list[dict] = []
            size = 0
            for _, event, _, _ in self._events:
                size += event_size(event)
                if out and size > BATCH_MAX_BYTES:
                    break
                out.append(event)
            return out

    def replace(self, seq: int, event: dict) -> dict:
        """Swap the queued event ``seq`` for ``event`` (same seq); return the new event."""
        with self._cond:
            for i, (s, old, session_id, nbytes) in enumerate(self._events):
                if s == seq:
                    new = {"seq": seq, **event}
                    self._events[i] = (s, new, session_id, nbytes)
                    self.size += event_size(new) - event_size(old)
                    return new
            raise KeyError(seq)

    def confirm(self, through: int) -> None:
        with self._cond:
            while self._events and self._events[0][0] <= through:
                _, event, session_id, nbytes = self._events.popleft()
                self.size -= event_size(event)
                if session_id is not None:
                    left = self._pending.get(session_id, 0) - nbytes
                    if left > 0:
                        self._pending[session_id] = left
                    else:
                        self._pending.pop(session_id, None)
            self._cond.notify_all()

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._events, timeout)


class Journal:
    """Work ids already taken on, so a redelivered item is never executed twice.

    Ids are appended to ``state_dir/work-journal`` before the item runs. Items whose effect
    outlives the agent (commands, file writes) are fsynced first, so not even a power cut
    makes them run twice; session items are not (their PTY dies with the agent anyway). The
    file keeps the newest ``KEEP`` ids and is compacted when it grows past twice that.
    """

    KEEP = 10_000

    def __init__(self, state_dir: Path) -> None:
        ensure_private_dir(state_dir)
        self.path = state_dir / "work-journal"
        self._seen: OrderedDict[str, None] = OrderedDict()
        if self.path.exists():
            for line in self.path.read_text().splitlines()[-self.KEEP:]:
                self._seen[line] = None
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        self._compact()

    def _compact(self) -> None:
        if self._file is not None:
            self._file.close()
        write_private(self.path, "".join(f"{i}\n" for i in self._seen).encode())
        self._file = self.path.open("a")
        self._lines = len(self._seen)

    def claim(self, work_id: str, durable: bool = True) -> bool:
        """True the first time a work id is seen (and records it), False afterwards."""
        with self._lock:
            if work_id in self._seen:
                return False
            self._seen[work_id] = None
            if len(self._seen) > self.KEEP:
                self._seen.popitem(last=False)
            assert self._file is not None
            self._file.write(work_id + "\n")
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
            self._lines += 1
            if self._lines > 2 * self.KEEP:
                self._compact()
            return True

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class Backoff:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt))."""

    def __init__(self, base: float = 0.5, cap: float = 120.0, rng: random.Random | None = None):
        self.base, self.cap = base, cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        bound = min(self.cap, self.base * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self._rng.uniform(0, bound)

    def reset(self) -> None:
        self.attempt = 0
