"""Every use of pyinfra's private names, in one place, for the pyinfra release it was written for.

pyinfra has no public hook for four things the runner needs: a fact cache (pyinfra 3 reads
every fact again), each host's own name for its operations (API mode merges them across
hosts), planning every host at once (``add_deploy`` goes host after host), and each
operation's end with whether it changed the host (for live progress). So this module
patches or re-implements private pieces of pyinfra 3.10, and reads the planned operations
out of pyinfra's ``State``. ``refuse_unknown_version`` stops a run under any other release
with one line; tests/installer/test_pyinfra_internals.py (and, for the progress events,
test_deploy_progress.py) hold each piece to its contract against the installed pyinfra.

Nothing here imports pyinfra at module level: the CLI imports this module to check the
version without paying for pyinfra and gevent.
"""

from __future__ import annotations

import copy
import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from packaging.specifiers import SpecifierSet

from cmdop_install.errors import UserError

# the pyinfra releases this module was written and tested for (installer/pyproject.toml pins it)
TESTED = SpecifierSet(">=3.10,<3.11")


def refuse_unknown_version(installed: str | None = None) -> None:
    """Raise a one-line UserError unless the installed pyinfra is one this module knows."""
    if installed is None:
        try:
            installed = version("pyinfra")
        except PackageNotFoundError:
            installed = "none"
    if installed not in TESTED:
        raise UserError(
            f"cmdop-install needs pyinfra {TESTED} (it patches that release's internals), "
            f"this environment has {installed}: reinstall cmdop-install with its own dependencies"
        )


def install() -> dict[tuple[str, str], str]:
    """Check the version, then patch pyinfra for this process (the runner's child).

    Returns the per-host operation names, filled in as operations are planned.
    """
    refuse_unknown_version()
    cache_facts_until_a_change()
    return record_operation_names()


def cache_facts_until_a_change() -> None:
    """Read each fact once per host until that host runs a command that may change it.

    pyinfra 3 caches no fact: every ``get_fact`` is a remote command, and each operation's
    generator runs twice (planning, then execution), so a no-op run read everything twice
    (including a Django start for ``installer_state``). A host's cache is dropped as soon as
    it runs anything that is not a fact (an operation's command or upload): what an
    operation reads at execution after an earlier change is read afresh.

    Private names: ``pyinfra.api.facts._get_fact`` (what ``host.get_fact`` calls for a fact
    that is not a ShortFact), and ``Host.run_shell_command/put_file/get_file``, the only ways
    a host runs anything.
    """
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


def record_operation_names() -> dict[tuple[str, str], str]:
    """Each host's own name for each of its operations: ``(host name, op hash) -> name``.

    In API mode pyinfra orders a host's operations by position, so the Nth operation of
    every host shares one hash and ``state.op_meta`` merges their names; hosts with
    different roles run different operations at the same position. The names are
    recorded per host where pyinfra assigns the hash.

    Private name: ``pyinfra.api.operation.solve_operation_consistency``, looked up in its
    module by the ``operation`` decorator at every call.
    """
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


def plan_in_parallel(state, deploy_func: Callable[[], Any]) -> dict[str, float]:
    """pyinfra's ``add_deploy``, but every host plans at once (one greenlet each); returns
    the seconds each host took.

    Planning reads facts over SSH; ``add_deploy`` does it host after host, so a no-op run
    grew linearly with the fleet. It is safe to interleave: the current host is
    greenlet-local in pyinfra's context, and in API mode each host numbers its own
    operations (``len(host.op_hash_order)``), whatever order the hosts plan in.
    """
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
    return took


def planned_operations(state, host) -> Iterator[tuple[str, Any]]:
    """``(op hash, pyinfra's per-host operation data)`` for each operation planned for
    ``host``, in run order."""
    for op_hash in state.get_op_order():
        host_op = state.ops[host].get(op_hash)
        if host_op is not None:
            yield op_hash, host_op


def would_change(state, host, host_op) -> bool:
    """Dry run: the operation would change the host and its ``_if`` conditions would hold.

    Our conditions look at what earlier operations *will* change; pyinfra's own
    ``op.did_change`` cannot answer before a run, so it counts as "would run"."""
    from pyinfra.context import ctx_host, ctx_state

    if not host_op.operation_meta.will_change:
        return False
    conditions = host_op.global_arguments.get("_if")
    if not conditions:
        return True
    with ctx_state.use(state), ctx_host.use(host):
        try:
            return all(c() for c in (conditions if isinstance(conditions, list) else [conditions]))
        except RuntimeError:
            return True


def report_progress(state, names: dict[tuple[str, str], str],
                    emit: Callable[[dict], None]) -> None:
    """Tell ``emit`` as each host connects (or cannot) and as each of its operations starts
    and ends (with whether it changed the host and succeeded).

    pyinfra's own CLI shows a spinner per operation and logs a line per host and operation;
    we show one line per host instead. Connections come through pyinfra's public state
    callbacks. An operation's end does not: ``operation_host_success`` fires before the
    operation records whether it changed anything, so ``run_host_op`` is wrapped (private
    name: ``pyinfra.api.operations.run_host_op``, looked up in its module by
    ``_run_host_op_with_context`` at every call). ``names``: from ``record_operation_names``.
    """
    from pyinfra.api.state import BaseStateCallback

    class Connections(BaseStateCallback):
        @staticmethod
        def host_connect(state, host) -> None:
            emit({"host": host.name, "event": "connected"})

        @staticmethod
        def host_connect_error(state, host, error) -> None:
            emit({"host": host.name, "event": "unreachable"})

    state.add_callback_handler(Connections())
    operations: Any = importlib.import_module("pyinfra.api.operations")
    run_host_op = operations.run_host_op

    def reporting(state, host, op_hash):
        host_op = state.ops[host].get(op_hash)
        if host_op is None:  # not one of this host's operations: pyinfra skips it
            return run_host_op(state, host, op_hash)
        name = names.get((host.name, op_hash), op_hash)
        emit({"host": host.name, "event": "start", "op": name})
        succeeded = run_host_op(state, host, op_hash)
        meta = host_op.operation_meta
        complete = meta.is_complete()
        emit({"host": host.name, "event": "done", "op": name,
              "changed": complete and meta.did_change(),
              "success": meta.did_succeed() if complete else succeeded})
        return succeeded

    operations.run_host_op = reporting
