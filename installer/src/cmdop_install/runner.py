"""The one module that drives pyinfra's API.

pyinfra runs on gevent and monkey-patches the process it lives in, so each run happens in
a child Python process (``python -m cmdop_install.runner``) that receives a JSON request on
stdin and answers with a JSON result on stdout; progress goes to stderr. Callers use
``run_deploy`` and get a ``RunResult`` back — nothing else in cmdop_install imports
``pyinfra.api``. Deploy code (``cmdop_install.deploys.*``) uses pyinfra *operations* only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from cmdop_install.errors import UserError


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

    def host_lines(self, verb: str = "changed") -> list[str]:
        """Per host: its count of changes (or why it failed), then each changed or failed
        operation, indented."""
        lines = []
        for host in self.hosts.values():
            if host.error:
                lines.append(f"{host.name}: FAILED: {host.error}")
                continue
            lines.append(f"{host.name}: {host.changes} {verb}")
            lines += [
                f"    {'FAILED ' if not op.success else ''}{op.name}"
                for op in host.ops
                if op.changed or not op.success
            ]
        return lines


Groups = dict[str, list[tuple[str, dict]]]


def with_host_data(groups: Groups, per_host: dict[str, dict]) -> Groups:
    """``groups`` with ``per_host[name]`` added to each named host's data (pyinfra's
    ``host.data``), wherever the host appears."""
    return {
        group: [(name, {**data, **per_host.get(name, {})}) for name, data in hosts]
        for group, hosts in groups.items()
    }


def run_deploy(
    groups: Groups,
    deploy: str,
    *,
    limit: list[str] | None = None,
    dry_run: bool = False,
    data: dict | None = None,
    facts: dict[str, str] | None = None,
    parallel: int = 0,
) -> RunResult:
    """Run ``deploy`` ("package.module:function") on the hosts of ``groups``.

    ``groups`` maps a group name to its ``(host name, host data)`` pairs (pyinfra's
    inventory model; host data holds the ssh_* connection keys).

    ``facts`` maps a label to a shell command whose output is read (a pyinfra ``Command``
    fact) on every host after the run; with ``dry_run`` nothing is executed and each
    operation reports whether it *would* change.
    """
    request = {
        "groups": {g: [[name, data] for name, data in hosts] for g, hosts in groups.items()},
        "deploy": deploy,
        "limit": limit,
        "dry_run": dry_run,
        "data": data or {},
        "facts": facts or {},
        "parallel": parallel,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cmdop_install.runner"],
        input=json.dumps(request),
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise UserError(
            f"pyinfra run of {deploy} failed before it could report (exit {proc.returncode})"
        )
    raw = json.loads(proc.stdout)
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


# ---------------------------------------------------------------- child process side


READ_ONLY = "cmdop_install.deploys.site:nothing"


def read_facts(groups: Groups, facts: dict[str, str], limit: list[str] | None = None) -> RunResult:
    """Run ``facts`` (label -> shell command, as root) on the hosts and change nothing."""
    return run_deploy(groups, READ_ONLY, limit=limit, facts=facts)


def _child() -> int:
    from gevent import monkey

    monkey.patch_all()

    import importlib
    import logging

    from gevent.pool import Pool
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_ops
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra.facts.server import Command

    names = _record_operation_names()
    _cache_facts_until_a_change()
    timer = _PhaseTimer()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    req = json.loads(sys.stdin.read())
    reply: dict = {"hosts": {}, "error": None}
    groups = {g: [(name, data) for name, data in hosts] for g, hosts in req["groups"].items()}
    everyone: dict[str, dict] = {}
    for hosts in groups.values():
        for name, data in hosts:
            everyone.setdefault(name, {}).update(data)
    limit = req["limit"]
    if limit:
        chosen = {h for g in limit for h, _ in groups.get(g, [])} | {
            n for n in limit if n in everyone
        }
        unknown = [n for n in limit if n not in groups and n not in everyone]
        if unknown:
            print(json.dumps({"error": f"--limit: no group or host named {', '.join(unknown)}"}))
            return 0
        everyone = {n: d for n, d in everyone.items() if n in chosen}
    inventory = Inventory(
        (list(everyone.items()), dict(req["data"])),
        **{g: ([(n, d) for n, d in hosts if n in everyone], {}) for g, hosts in groups.items()},
    )
    config = Config(PARALLEL=req["parallel"] or 0, FAIL_PERCENT=None)
    state = State(inventory, config)
    module_name, func_name = req["deploy"].split(":")
    deploy_func = getattr(importlib.import_module(module_name), func_name)
    try:
        timer.mark()
        connect_all(state)
        timer.mark("connect")
        for host in inventory:
            reply["hosts"][host.name] = {"ops": [], "error": None, "facts": {}}
        for host in state.failed_hosts:
            reply["hosts"][host.name]["error"] = (
                "cannot connect over ssh (host down, wrong key or address?)"
            )
        _plan_in_parallel(state, deploy_func)
        timer.mark("plan")
        if not req["dry_run"]:
            run_ops(state)
            timer.mark("run")
    except PyinfraError as exc:
        # "No hosts remaining": every host failed; the per-host results below say where
        if not state.failed_hosts:
            reply["error"] = f"pyinfra: {exc}"
    for host in inventory:
        entry = reply["hosts"][host.name]
        if host in state.failed_hosts and entry["error"] is None:
            entry["error"] = "an operation failed on this host"
        for op_hash in state.get_op_order():
            host_op = state.ops[host].get(op_hash)
            if host_op is None:
                continue
            meta = host_op.operation_meta
            name = names.get((host.name, op_hash), op_hash)
            if req["dry_run"]:
                with ctx_state.use(state), ctx_host.use(host):
                    would = bool(meta.will_change) and _conditions_hold(host_op)
                entry["ops"].append({"name": name, "changed": would, "success": True})
            elif meta.is_complete():
                entry["ops"].append(
                    {"name": name, "changed": meta.did_change(), "success": meta.did_succeed()}
                )
        failed_ops = [op["name"] for op in entry["ops"] if not op["success"]]
        if failed_ops and entry["error"] in (None, "an operation failed on this host"):
            entry["error"] = f"failed at: {failed_ops[0]} (its output is above)"

    def read_host_facts(host) -> None:
        if host not in state.failed_hosts:
            for label, command in req["facts"].items():
                reply["hosts"][host.name]["facts"][label] = (
                    host.get_fact(Command, command, _sudo=True, _ignore_errors=True) or ""
                )

    if req["facts"]:
        Pool(len(reply["hosts"]) or 1).map(read_host_facts, list(inventory))
    timer.mark("facts")
    disconnect_all(state)
    timer.report()
    print(json.dumps(reply))
    return 0


def _cache_facts_until_a_change() -> None:
    """Read each fact once per host until that host runs a command that may change it.

    pyinfra 3 caches no fact: every ``get_fact`` is a remote command, and each operation's
    generator runs twice (planning, then execution), so a no-op run read everything twice
    (including a Django start for ``installer_state``). A host's cache is dropped as soon as
    it runs anything that is not a fact (an operation's command or upload): what an
    operation reads at execution after an earlier change is read afresh.
    """
    import copy
    from collections import Counter

    import pyinfra.api.facts as facts_module
    from gevent.event import AsyncResult
    from pyinfra.api.host import Host

    read_fact = facts_module._get_fact
    cache: dict[int, dict] = {}
    reading: Counter = Counter()  # reads in flight per host (a prefetch runs beside the plan)

    def cached_get_fact(state, host, cls, args=None, kwargs=None, *rest, **more):
        key = (cls, repr(args), repr(sorted((kwargs or {}).items())))
        per_host = cache.setdefault(id(host), {})
        entry = per_host.get(key)
        if entry is None:
            entry = per_host[key] = AsyncResult()
            reading[id(host)] += 1
            try:
                entry.set(read_fact(state, host, cls, args, kwargs, *rest, **more))
            except BaseException as exc:
                per_host.pop(key, None)
                entry.set_exception(exc)
                raise
            finally:
                reading[id(host)] -= 1
        return copy.deepcopy(entry.get())

    def forgetting(method):
        def run(self, *args, **kwargs):
            if not reading[id(self)]:
                cache.pop(id(self), None)
            return method(self, *args, **kwargs)

        return run

    facts_module._get_fact = cached_get_fact
    for name in ("run_shell_command", "put_file", "get_file"):
        setattr(Host, name, forgetting(getattr(Host, name)))


def _plan_in_parallel(state, deploy_func) -> None:
    """pyinfra's ``add_deploy``, but every host plans at once (one greenlet each).

    Planning reads facts over SSH; ``add_deploy`` does it host after host, so a no-op run
    grew linearly with the fleet. It is safe to interleave: the current host is
    greenlet-local in pyinfra's context, and in API mode each host numbers its own
    operations (``len(host.op_hash_order)``), whatever order the hosts plan in.
    """
    import os
    import time

    from gevent.pool import Pool
    from pyinfra.context import ctx_host, ctx_state

    took: dict[str, float] = {}

    def plan(host) -> None:
        started = time.monotonic()
        with ctx_host.use(host):
            deploy_func()
        took[host.name] = time.monotonic() - started

    hosts = list(state.inventory.get_active_hosts())
    with ctx_state.use(state):
        Pool(max(len(hosts), 1)).map(plan, hosts)
    if os.environ.get("CMDOP_INSTALL_PROFILE") == "1" and took:
        slowest = sorted(took.items(), key=lambda kv: -kv[1])[:3]
        print(
            "planning, slowest hosts: " + ", ".join(f"{n} {s:.1f}s" for n, s in slowest),
            file=sys.stderr,
        )


class _PhaseTimer:
    """With CMDOP_INSTALL_PROFILE=1, seconds per phase (connect, plan, run, facts) on stderr."""

    def __init__(self) -> None:
        import os
        import time

        self.enabled = os.environ.get("CMDOP_INSTALL_PROFILE") == "1"
        self.clock = time.monotonic
        self.last = self.clock()
        self.phases: list[str] = []

    def mark(self, phase: str | None = None) -> None:
        now = self.clock()
        if phase:
            self.phases.append(f"{phase} {now - self.last:.1f}s")
        self.last = now

    def report(self) -> None:
        if self.enabled:
            print("pyinfra phases: " + ", ".join(self.phases), file=sys.stderr)


def _record_operation_names() -> dict[tuple[str, str], str]:
    """Each host's own name for each of its operations.

    In API mode pyinfra orders a host's operations by position, so the Nth operation of
    every host shares one hash and ``state.op_meta`` merges their names; hosts with
    different roles run different operations at the same position. The names are
    recorded per host where pyinfra assigns the hash.
    """
    import importlib

    # the module, not the `operation` decorator that pyinfra.api re-exports under that name;
    # Any, because we replace one of its functions and ModuleType declares none
    operation_module: Any = importlib.import_module("pyinfra.api.operation")

    names: dict[tuple[str, str], str] = {}
    assign = operation_module.solve_operation_consistency

    def recording(op_names, state, host):
        op_order, op_hash = assign(op_names, state, host)
        names[(host.name, op_hash)] = ", ".join(sorted(op_names))
        return op_order, op_hash

    operation_module.solve_operation_consistency = recording
    return names


def _conditions_hold(host_op) -> bool:
    """Dry run: an operation guarded by ``_if`` runs only if its conditions would hold.

    Our conditions look at what earlier operations *will* change; pyinfra's own
    ``op.did_change`` cannot answer before a run, so it counts as "would run"."""
    conditions = host_op.global_arguments.get("_if")
    if not conditions:
        return True
    try:
        return all(c() for c in (conditions if isinstance(conditions, list) else [conditions]))
    except RuntimeError:
        return True


def _child_main() -> int:
    """The child never shows a traceback (it could quote operator data): one line instead."""
    import os

    try:
        return _child()
    except Exception as exc:  # noqa: BLE001 - reported as one line, with details on request
        if os.environ.get("CMDOP_INSTALL_DEBUG") == "1":
            raise
        print(
            json.dumps(
                {
                    "error": f"deploy code failed: {type(exc).__name__}: {exc} "
                    "(rerun with CMDOP_INSTALL_DEBUG=1 for the traceback)"
                }
            )
        )
        return 0


if __name__ == "__main__":
    sys.exit(_child_main())
