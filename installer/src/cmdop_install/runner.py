"""The one module that drives pyinfra's API.

pyinfra runs on gevent and monkey-patches the process it lives in, so each run happens in
a child Python process (``python -m cmdop_install.runner``) that receives a JSON request on
stdin and answers with a JSON result on stdout; pyinfra's log lines go to stderr, and
inside ``reporting(sink)`` each host's progress goes as JSON lines to a pipe of its own, for
the sink (``cmdop_install.progress``) to show while the run goes. Callers use
``run_deploy`` and get a ``RunResult`` back — nothing else in cmdop_install imports
``pyinfra.api``. Deploy code (``cmdop_install.deploys.*``) uses pyinfra *operations* only.
What pyinfra has no public API for (a fact cache, per-host operation names, planning all
hosts at once) is ``pyinfra_internals``'s, which knows the one pyinfra release it fits.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field

from cmdop_install import pyinfra_internals
from cmdop_install.errors import UserError
from cmdop_install.filediff import FileChange
from cmdop_install.progress import NORMAL, QUIET, VERBOSE, Sink


@dataclass
class OpResult:
    name: str
    changed: bool
    success: bool


@dataclass
class HostResult:
    name: str
    ops: list[OpResult] = field(default_factory=list)
    error: str | None = None
    facts: dict[str, str] = field(default_factory=dict)
    files: list[FileChange] = field(default_factory=list)  # a deploy's rendered files

    @property
    def changes(self) -> int:
        return sum(op.changed for op in self.ops)


@dataclass
class RunResult:
    hosts: dict[str, HostResult]
    dry_run: bool

    @property
    def changes(self) -> int:
        return sum(h.changes for h in self.hosts.values())

    @property
    def failed(self) -> list[str]:
        return [
            h.name for h in self.hosts.values() if h.error or not all(op.success for op in h.ops)
        ]

    def as_json(self) -> dict:
        """The run for a ``--json`` document: per host its changes, its error, the
        operations that changed or failed and the rendered files it changes (facts stay
        out: one may carry what a host holds)."""
        return {
            "changes": self.changes,
            "failed": self.failed,
            "hosts": [
                {
                    "host": h.name,
                    "changes": h.changes,
                    "error": h.error,
                    "operations": [asdict(op) for op in h.ops if op.changed or not op.success],
                    "files": [f.as_json() for f in h.files],
                }
                for h in self.hosts.values()
            ],
        }

    def host_lines(self, verb: str = "changed", verbosity: int = NORMAL,
                   diffs: bool = False) -> list[str]:
        """Per host: its count of changes (or why it failed), then each changed or failed
        operation and each rendered file it changes (``diffs``: with its diff), indented.
        QUIET: only the hosts that failed; VERBOSE: every operation with its result."""
        lines = []
        for host in self.hosts.values():
            if host.error:
                lines.append(f"{host.name}: FAILED: {host.error}")
                continue
            if verbosity > QUIET:
                lines.append(f"{host.name}: {host.changes} {verb}")
                lines += [f"    {line}" for line in _op_lines(host.ops, verb, verbosity)]
                lines += [f"    {line}" for f in host.files for line in f.lines(verb, diffs)]
        return lines


def _op_lines(ops: list[OpResult], verb: str, verbosity: int) -> list[str]:
    if verbosity >= VERBOSE:
        width = max(len("FAILED"), len(verb))
        return [f"{'FAILED' if not op.success else verb if op.changed else 'ok':<{width}}  "
                f"{op.name}" for op in ops]
    return [f"{'FAILED ' if not op.success else ''}{op.name}"
            for op in ops if op.changed or not op.success]


Groups = dict[str, list[tuple[str, dict]]]


def with_host_data(groups: Groups, per_host: dict[str, dict]) -> Groups:
    """``groups`` with ``per_host[name]`` added to each named host's data (pyinfra's
    ``host.data``), wherever the host appears."""
    return {
        group: [(name, {**data, **per_host.get(name, {})}) for name, data in hosts]
        for group, hosts in groups.items()
    }


@dataclass(frozen=True)
class RunRequest:
    """What the child runs: the parent's arguments to ``run_deploy``, as JSON on its stdin."""

    groups: Groups
    deploy: str
    limit: list[str] | None = None
    dry_run: bool = False
    data: dict = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)
    parallel: int = 0
    host_facts: dict[str, dict[str, str]] = field(default_factory=dict)
    facts_before: dict[str, dict[str, str]] = field(default_factory=dict)
    quiet: bool = False  # pyinfra logs errors only, not warnings

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunRequest:
        raw = json.loads(text)
        groups = {g: [(n, d) for n, d in hosts] for g, hosts in raw.pop("groups").items()}
        return cls(groups=groups, **raw)


# where run_deploy reports its progress (``reporting``); None: nowhere
_progress: ContextVar[Sink | None] = ContextVar("cmdop_install_progress", default=None)


@contextmanager
def reporting(sink: Sink | None) -> Iterator[None]:
    """Every deploy run inside the block reports its progress to ``sink`` (reads of facts
    do not: they change nothing and take a moment)."""
    token = _progress.set(sink)
    try:
        yield
    finally:
        _progress.reset(token)


def run_deploy(
    groups: Groups,
    deploy: str,
    *,
    limit: list[str] | None = None,
    dry_run: bool = False,
    data: dict | None = None,
    facts: dict[str, str] | None = None,
    parallel: int = 0,
    host_facts: dict[str, dict[str, str]] | None = None,
    facts_before: dict[str, dict[str, str]] | None = None,
) -> RunResult:
    """Run ``deploy`` ("package.module:function") on the hosts of ``groups``.

    ``groups`` maps a group name to its ``(host name, host data)`` pairs (pyinfra's
    inventory model; host data holds the ssh_* connection keys).

    ``facts`` maps a label to a shell command whose output is read (a pyinfra ``Command``
    fact) on every host after the run; ``host_facts`` maps a host name to the facts read on
    that host instead (a host is asked only what concerns it); ``facts_before``: per host,
    facts read before anything is planned or run; with ``dry_run`` nothing is executed and
    each operation reports whether it *would* change.
    """
    pyinfra_internals.refuse_unknown_version()
    sink = _progress.get() if deploy != READ_ONLY else None
    request = RunRequest(groups, deploy, limit, dry_run, data or {}, facts or {}, parallel,
                         host_facts or {}, facts_before or {},
                         quiet=sink is not None and sink.verbosity == QUIET)
    if sink is None:
        proc = subprocess.run(
            [sys.executable, "-m", "cmdop_install.runner"],
            input=request.to_json(),
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        returncode, stdout = proc.returncode, proc.stdout
    else:
        sink.begin(sorted(select_hosts(groups, limit)), dry_run)
        try:
            returncode, stdout = _run_reporting(request, sink)
        finally:
            sink.end()
    if returncode != 0 or not stdout.strip():
        raise UserError(
            f"pyinfra run of {deploy} failed before it could report (exit {returncode})"
        )
    raw = json.loads(stdout)
    if raw.get("error"):
        raise UserError(raw["error"])
    return RunResult(
        hosts={
            name: HostResult(
                name=name,
                ops=[OpResult(**op) for op in h["ops"]],
                error=h["error"],
                facts=h["facts"],
            )
            for name, h in raw["hosts"].items()
        },
        dry_run=dry_run,
    )


PROGRESS_FD = "CMDOP_INSTALL_PROGRESS_FD"
TICK = 0.5  # seconds between redraws while no event comes (the elapsed time moves on)


def _run_reporting(request: RunRequest, sink: Sink) -> tuple[int, str]:
    """The child with a pipe for its progress events (JSON lines), each handed to ``sink``
    as it comes, and its log lines (stderr) too, so that a live display stays whole."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cmdop_install.runner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(write_end,),
            env={**os.environ, PROGRESS_FD: str(write_end)},
        )
    finally:
        os.close(write_end)
    with proc:
        assert proc.stdin and proc.stdout and proc.stderr
        try:
            proc.stdin.write(request.to_json().encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the child died before reading: its exit code says so below
        try:
            stdout = _forward(read_end, proc.stderr.fileno(), proc.stdout.fileno(), sink)
        finally:
            os.close(read_end)
    return proc.returncode, stdout


def _forward(events: int, stderr: int, stdout: int, sink: Sink) -> str:
    """Read the child's three pipes until each ends: events and log lines go to ``sink``
    line by line, stdout (the reply) is returned."""
    pending = {events: b"", stderr: b"", stdout: b""}
    reply = []
    while pending:
        ready, _, _ = select.select(list(pending), [], [], TICK)
        if not ready:
            sink.tick()
        for fd in ready:
            chunk = os.read(fd, 65536)
            if fd == stdout:
                reply.append(chunk)
                if not chunk:
                    del pending[fd]
                continue
            *lines, pending[fd] = (pending[fd] + chunk).split(b"\n")
            if not chunk:
                lines.append(pending.pop(fd))
            for line in filter(None, lines):
                if fd == events:
                    sink.event(json.loads(line))
                else:
                    sink.message(line.decode(errors="replace"))
    return b"".join(reply).decode()


READ_ONLY = "cmdop_install.deploys.site:nothing"


def read_facts(groups: Groups, facts: dict[str, str], limit: list[str] | None = None,
               host_facts: dict[str, dict[str, str]] | None = None) -> RunResult:
    """Run ``facts`` (label -> shell command, as root) on the hosts and change nothing;
    a host named in ``host_facts`` runs its own facts instead."""
    return run_deploy(groups, READ_ONLY, limit=limit, facts=facts, host_facts=host_facts)


# ---------------------------------------------------------------- child process side
# build the inventory -> connect -> plan -> execute -> collect each host's result


UNREACHABLE = "cannot connect over ssh (host down, wrong key or address?)"


def _unreachable(reason: str) -> str:
    """A host's error when SSH refused it: ours, then pyinfra's reason (e.g. the port
    refused, or the key not accepted)."""
    return f"{UNREACHABLE}: {reason}" if reason else UNREACHABLE


def select_hosts(groups: Groups, limit: list[str] | None) -> dict[str, dict]:
    """Host name -> its data merged over every group it is in, for the hosts the run covers:
    all of them, or those ``limit`` names (a group or a host)."""
    everyone: dict[str, dict] = {}
    for hosts in groups.values():
        for name, data in hosts:
            everyone.setdefault(name, {}).update(data)
    if not limit:
        return everyone
    unknown = [n for n in limit if n not in groups and n not in everyone]
    if unknown:
        raise UserError(f"--limit: no group or host named {', '.join(unknown)}")
    chosen = {h for g in limit for h, _ in groups.get(g, [])} | {n for n in limit if n in everyone}
    return {n: d for n, d in everyone.items() if n in chosen}


def _build_state(request: RunRequest):
    from pyinfra.api import Config, Inventory, State

    everyone = select_hosts(request.groups, request.limit)
    inventory = Inventory(
        (list(everyone.items()), dict(request.data)),
        **{
            g: ([(n, d) for n, d in hosts if n in everyone], {})
            for g, hosts in request.groups.items()
        },
    )
    return State(inventory, Config(PARALLEL=request.parallel or 0, FAIL_PERCENT=None))


def _connect(state) -> dict[str, str]:
    """Connect to every host; returns why each host that could not be reached was not.

    pyinfra logs each refusal itself as well; that line is kept off stderr, because every
    command reports each host in lines of its own (a refused rotation or deploy is one line)
    and this error is in them."""
    from pyinfra import logger
    from pyinfra.api.connect import connect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.state import BaseStateCallback

    why: dict[str, str] = {}

    class Refusals(BaseStateCallback):
        @staticmethod
        def host_connect_error(state, host, error) -> None:
            why[host.name] = str(error)

    state.add_callback_handler(Refusals())
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        connect_all(state)
    except PyinfraError:
        pass  # "No hosts remaining": each host is reported as unreachable below
    finally:
        logger.setLevel(level)
    return {host.name: why.get(host.name, "") for host in state.failed_hosts}


def _plan_and_execute(state, deploy: str, dry_run: bool, timer: _PhaseTimer,
                      emit: Emit = None) -> str | None:
    """Plan ``deploy`` on every reachable host, then (unless ``dry_run``) run it; returns
    an error that is about the run as a whole, not one host."""
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops

    module_name, func_name = deploy.split(":")
    deploy_func = getattr(importlib.import_module(module_name), func_name)
    try:
        _phase(emit, "plan")
        timer.slowest(pyinfra_internals.plan_in_parallel(state, deploy_func))
        timer.mark("plan")
        if emit is not None:
            for host in state.inventory.get_active_hosts():
                total = sum(1 for _ in pyinfra_internals.planned_operations(state, host))
                emit({"host": host.name, "event": "planned", "total": total})
        if not dry_run:
            _phase(emit, "run")
            run_ops(state)
            timer.mark("run")
    except PyinfraError as exc:
        # "No hosts remaining": every host failed; the per-host results say where
        if not state.failed_hosts:
            return f"pyinfra: {exc}"
    return None


def _host_result(state, host, names: dict, dry_run: bool) -> HostResult:
    ops = []
    for op_hash, host_op in pyinfra_internals.planned_operations(state, host):
        name = names.get((host.name, op_hash), op_hash)
        if dry_run:
            ops.append(OpResult(name, pyinfra_internals.would_change(state, host, host_op), True))
        elif host_op.operation_meta.is_complete():
            meta = host_op.operation_meta
            ops.append(OpResult(name, meta.did_change(), meta.did_succeed()))
    failed = [op.name for op in ops if not op.success]
    error = None
    if failed:
        error = f"failed at: {failed[0]} (its output is above)"
    elif host in state.failed_hosts:
        error = "an operation failed on this host"
    return HostResult(host.name, ops, error)


def _read_host_facts(state, facts: dict[str, str],
                     host_facts: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Read ``facts`` (a host in ``host_facts``: its own) on every host that did not fail,
    all hosts at once; host name -> label -> output."""
    from gevent.pool import Pool
    from pyinfra.facts.server import Command

    read: dict[str, dict[str, str]] = {}

    def read_one(host) -> None:
        if host not in state.failed_hosts:
            read[host.name] = {
                label: host.get_fact(Command, command, _sudo=True, _ignore_errors=True) or ""
                for label, command in host_facts.get(host.name, facts).items()
            }

    hosts = list(state.inventory)
    Pool(len(hosts) or 1).map(read_one, hosts)
    return read


Emit = Callable[[dict], None] | None


def _phase(emit: Emit, phase: str) -> None:
    if emit is not None:
        emit({"event": "phase", "phase": phase})


def _child(request: RunRequest, emit: Emit = None) -> dict:
    """The run, in this (gevent-patched) process; returns the reply for the parent.
    ``emit``: where each host's progress goes, as it happens."""
    from pyinfra.api.connect import disconnect_all

    names = pyinfra_internals.install()
    logging.basicConfig(level=logging.ERROR if request.quiet else logging.WARNING,
                        stream=sys.stderr, format="%(message)s")
    timer = _PhaseTimer()
    state = _build_state(request)
    if emit is not None:
        pyinfra_internals.report_progress(state, names, emit)
    _phase(emit, "connect")
    unreachable = _connect(state)
    timer.mark("connect")
    before = _read_host_facts(state, {}, request.facts_before) if request.facts_before else {}
    error = None
    if len(unreachable) < len(state.inventory):
        error = _plan_and_execute(state, request.deploy, request.dry_run, timer, emit)
    results = {
        host.name: HostResult(host.name, error=_unreachable(unreachable[host.name]))
        if host.name in unreachable
        else _host_result(state, host, names, request.dry_run)
        for host in state.inventory
    }
    if request.facts or request.host_facts:
        _phase(emit, "facts")
        for name, read in _read_host_facts(state, request.facts, request.host_facts).items():
            results[name].facts.update(read)
    for name, read in before.items():
        results[name].facts.update(read)
    timer.mark("facts")
    disconnect_all(state)
    timer.report()
    return {"hosts": {name: asdict(result) for name, result in results.items()}, "error": error}


class _PhaseTimer:
    """With CMDOP_INSTALL_PROFILE=1, seconds per phase (connect, plan, run, facts) and the
    slowest hosts to plan, on stderr."""

    def __init__(self) -> None:
        self.enabled = os.environ.get("CMDOP_INSTALL_PROFILE") == "1"
        self.clock = time.monotonic
        self.last = self.clock()
        self.phases: list[str] = []

    def mark(self, phase: str) -> None:
        now = self.clock()
        self.phases.append(f"{phase} {now - self.last:.1f}s")
        self.last = now

    def slowest(self, took: dict[str, float]) -> None:
        if self.enabled and took:
            slowest = sorted(took.items(), key=lambda kv: -kv[1])[:3]
            print(
                "planning, slowest hosts: " + ", ".join(f"{n} {s:.1f}s" for n, s in slowest),
                file=sys.stderr,
            )

    def report(self) -> None:
        if self.enabled:
            print("pyinfra phases: " + ", ".join(self.phases), file=sys.stderr)


def _child_main() -> int:
    """The child never shows a traceback (it could quote operator data): one line instead."""
    from gevent import monkey

    monkey.patch_all()
    fd = os.environ.get(PROGRESS_FD)
    events = os.fdopen(int(fd), "w", buffering=1) if fd else None

    def emit(event: dict) -> None:
        assert events is not None
        events.write(json.dumps(event) + "\n")

    try:
        reply = _child(RunRequest.from_json(sys.stdin.read()), emit if events else None)
    except UserError as exc:
        reply = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported as one line, with details on request
        if os.environ.get("CMDOP_INSTALL_DEBUG") == "1":
            raise
        reply = {
            "error": f"deploy code failed: {type(exc).__name__}: {exc} "
            "(rerun with CMDOP_INSTALL_DEBUG=1 for the traceback)"
        }
    finally:
        if events is not None:
            events.close()  # the parent reads events until this, then the reply
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
