"""What the operator sees while a deploy or rollout runs: each host's progress, as it goes.

The runner's child reports events (a host connected or not, planned N operations, started
or ended one) and ``runner.run_deploy`` hands them to a ``Sink``. On a terminal, ``Live``
keeps one line per host up to date in place (phase, current operation, operations done of
planned, changes, elapsed time); elsewhere (a log, CI), ``Plain`` writes one line per event
and no control sequence. ``--quiet`` shows only failed operations, ``--verbose`` every
operation with its result. Operation names are ours (``Postgres | Files in /etc/...``):
they never carry a secret.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

QUIET, NORMAL, VERBOSE = 0, 1, 2


class Sink(Protocol):
    verbosity: int

    def begin(self, hosts: list[str], dry_run: bool) -> None: ...

    def event(self, event: dict) -> None: ...

    def message(self, line: str) -> None:
        """A line the run logged (an error's output): shown as it is."""

    def tick(self) -> None: ...

    def end(self) -> None: ...


def elapsed(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


@dataclass
class HostLine:
    """One host's progress in a run."""

    name: str
    started: float
    phase: str = "connecting"
    op: str = ""
    done: int = 0
    total: int | None = None
    changed: int = 0
    ended: float | None = None

    def text(self, now: float, width: int) -> str:
        count = f"{self.done}/{self.total}" if self.total is not None else "-"
        line = (f"{self.name:<{width}}  {self.phase:<11} {count:>7}  {self.changed:>3} changed  "
                f"{elapsed((self.ended or now) - self.started):>5}")
        return f"{line}  {self.op}" if self.op else line


class Tracker:
    """Applies the runner's events to one HostLine per host; says which lines each event
    is worth on its own (for the plain output and --verbose), if any."""

    def __init__(self, verbosity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.verbosity = verbosity
        self.clock = clock
        self.hosts: dict[str, HostLine] = {}
        self.dry_run = False

    def begin(self, hosts: list[str], dry_run: bool) -> None:
        now = self.clock()
        self.hosts = {name: HostLine(name, now) for name in hosts}
        self.dry_run = dry_run

    def apply(self, event: dict) -> list[str]:
        """Update the lines; returns the lines of text the event is worth on its own."""
        if event["event"] == "phase":
            for host in self.hosts.values():
                if host.ended is None and event["phase"] == "plan":
                    host.phase = "planning"
            return []
        if event["host"] not in self.hosts:
            return []
        host, kind = self.hosts[event["host"]], event["event"]
        if kind == "connected":
            host.phase = "connected"
            return self._normal(f"{host.name}: connected")
        if kind == "unreachable":
            host.phase, host.ended = "unreachable", self.clock()
            return [f"{host.name}: unreachable over ssh"]
        if kind == "planned":
            host.total, host.phase = event["total"], "planned"
            if self.dry_run:
                host.ended = self.clock()
            return self._normal(f"{host.name}: {event['total']} operations planned")
        if kind == "start":
            host.phase, host.op = "running", event["op"]
            return []
        return self._op_done(host, event)

    def _op_done(self, host: HostLine, event: dict) -> list[str]:
        host.done += 1
        host.changed += bool(event["changed"])
        result = "FAILED" if not event["success"] else (
            "changed" if event["changed"] else "ok")
        line = (f"{host.name}: [{host.done}/{host.total or '?'}] {result} {event['op']} "
                f"({elapsed(self.clock() - host.started)})")
        if not event["success"]:
            host.phase, host.ended = "FAILED", self.clock()
            return [line]
        host.op = ""
        shown = self.verbosity >= VERBOSE or (event["changed"] and self.verbosity >= NORMAL)
        lines = [line] if shown else []
        if host.done == host.total:
            host.phase, host.ended = "done", self.clock()
            lines += self._normal(f"{host.name}: done, {host.changed} changed, {host.done} "
                                  f"operations in {elapsed(host.ended - host.started)}")
        return lines

    def finish(self) -> None:
        """The run ended: a host with nothing (left) to run is done, the clock stops."""
        now = self.clock()
        for host in self.hosts.values():
            if host.ended is None:
                host.ended = now
                if host.total is not None and host.done == host.total:
                    host.phase = "done"

    def _normal(self, line: str) -> list[str]:
        return [line] if self.verbosity >= NORMAL else []

    def lines(self) -> list[str]:
        width = max((len(name) for name in self.hosts), default=0)
        now = self.clock()
        return [host.text(now, width) for host in self.hosts.values()]


class Plain:
    """One line per event worth one, no control sequence (a log, CI, --quiet)."""

    def __init__(self, stream: TextIO, verbosity: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.verbosity = verbosity
        self.tracker = Tracker(verbosity, clock)

    def begin(self, hosts: list[str], dry_run: bool) -> None:
        self.tracker.begin(hosts, dry_run)

    def event(self, event: dict) -> None:
        for line in self.tracker.apply(event):
            self.message(line)

    def message(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def tick(self) -> None:
        pass

    def end(self) -> None:
        self.tracker.finish()


class Live:
    """One line per host, redrawn in place on a terminal (and as the seconds pass);
    --verbose lines scroll above them. The lines stay on screen after the run."""

    # move to the start of the line N lines up, then clear from there to the screen's end;
    # clear the line
    UP, CLEAR = "\x1b[{}F\x1b[J", "\x1b[2K"

    def __init__(self, stream: TextIO, verbosity: int,
                 clock: Callable[[], float] = time.monotonic,
                 columns: Callable[[], int] = lambda: shutil.get_terminal_size().columns) -> None:
        self.stream = stream
        self.verbosity = verbosity
        self.tracker = Tracker(verbosity, clock)
        self.columns = columns
        self.drawn = 0

    def begin(self, hosts: list[str], dry_run: bool) -> None:
        self.tracker.begin(hosts, dry_run)
        self.drawn = 0
        self.draw()

    def event(self, event: dict) -> None:
        lines = self.tracker.apply(event)
        # the per-host lines say what a normal event says; --verbose lines scroll above them
        self.draw(lines if self.verbosity >= VERBOSE else [])

    def message(self, line: str) -> None:
        self.draw([line])

    def tick(self) -> None:
        self.draw()

    def end(self) -> None:
        self.tracker.finish()
        self.draw()
        self.drawn = 0

    def draw(self, above: list[str] | None = None) -> None:
        # a host line as wide as the terminal would wrap and break the count of lines to go
        # up; the lines above scroll away and may wrap
        width = max(self.columns() - 1, 20)
        out = [self.UP.format(self.drawn)] if self.drawn else []
        out += [self.CLEAR + line + "\n" for line in above or []]
        out += [self.CLEAR + line[:width] + "\n" for line in self.tracker.lines()]
        self.stream.write("".join(out))
        self.stream.flush()
        self.drawn = len(self.tracker.hosts)


def for_output(stream: TextIO, verbosity: int, as_json: bool) -> Sink | None:
    """The sink for a command's progress on ``stream`` (stderr): none with --json (its
    human lines are the summary alone), live lines on a terminal, plain lines elsewhere."""
    if as_json:
        return None
    if verbosity > QUIET and stream.isatty():
        return Live(stream, verbosity)
    return Plain(stream, verbosity)
