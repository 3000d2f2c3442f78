"""Contract tests for every private pyinfra piece the runner relies on (pyinfra_internals),
against the pyinfra that is installed: a release that breaks one of them fails here, in the
unit tier, not only in the lab.

The runner's own steps (build the inventory, connect, plan, execute, collect) run in this
process on pyinfra's ``@fake`` hosts, which record each command instead of running it.
"""

import importlib
from pathlib import Path

import gevent
import pyinfra.api.facts as facts_module
import pytest
from cmdop_install import pyinfra_internals, runner
from cmdop_install.errors import UserError
from cmdop_install.runner import RunRequest
from gevent.event import Event
from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.host import Host
from pyinfra.facts.server import Command
from pyinfra.operations import server

pytestmark = pytest.mark.unit

FAKE = {"fake_delay": 0, "fake_delay_jitter": 0}


@pytest.fixture
def names(monkeypatch):
    """pyinfra patched as in the runner's child; every patched name is restored afterwards."""
    operation_module = importlib.import_module("pyinfra.api.operation")
    monkeypatch.setattr(facts_module, "_get_fact", facts_module._get_fact)
    for name in ("run_shell_command", "put_file", "get_file"):
        monkeypatch.setattr(Host, name, getattr(Host, name))
    monkeypatch.setattr(
        operation_module,
        "solve_operation_consistency",
        operation_module.solve_operation_consistency,
    )
    return pyinfra_internals.install()


def run(hosts: list[str], deploy: str, names: dict, dry_run: bool = False, **data):
    """The runner's child steps on ``@fake/<name>`` hosts; returns per-host (result, commands)."""
    groups = {"all": [(f"@fake/{h}", {**FAKE, **data}) for h in hosts]}
    state = runner._build_state(RunRequest(groups, f"{__name__}:{deploy}", dry_run=dry_run))
    assert runner._connect(state) == {}
    timer = runner._PhaseTimer()
    assert runner._plan_and_execute(state, f"{__name__}:{deploy}", dry_run, timer) is None
    return {
        h.name.removeprefix("@fake/"): (
            runner._host_result(state, h, names, dry_run),
            h.connector.executed_commands,
        )
        for h in state.inventory
    }


def op_names(result) -> list[str]:
    return [op.name for op in result.ops]


# ------------------------------------------------------------------ deploys the tests run


@operation()
def report_config():
    """Reads the fact again when it runs, after an earlier operation changed the host."""
    if host.get_fact(Command, "cat /etc/x") == "new":
        host.noop("/etc/x is new")
        return
    yield "echo stale"


def deploy_reading_twice() -> None:
    host.get_fact(Command, "cat /etc/x")
    host.get_fact(Command, "cat /etc/x")
    server.shell(name="Change /etc/x", commands=["touch /etc/x"])
    report_config(name="Report /etc/x")


def deploy_by_role() -> None:
    if host.name == "@fake/db":
        server.shell(name="Database", commands=["db"])
        server.shell(name="Database backup", commands=["backup"])
    else:
        server.shell(name="Web", commands=["web"])


web_planned = Event()


def deploy_waiting_for_web() -> None:
    if host.name == "@fake/db":
        # host after host (pyinfra's add_deploy), db would wait for web forever
        if not web_planned.wait(timeout=30):
            raise AssertionError("web did not plan while db was planning")
        server.shell(name="Database", commands=["db"])
    else:
        server.shell(name="Web first", commands=["web1"])
        server.shell(name="Web second", commands=["web2"])
        web_planned.set()


@operation()
def already_there():
    host.noop("nothing to do")
    yield from ()


def deploy_conditional() -> None:
    server.shell(name="Runs", commands=["runs"])
    server.shell(name="Skipped by its condition", commands=["skipped"], _if=lambda: False)
    already_there(name="Already there")


# ------------------------------------------------------------------------------ the tests


def test_a_release_other_than_the_tested_one_is_refused_in_one_line() -> None:
    pyinfra_internals.refuse_unknown_version()  # the installed one
    pyinfra_internals.refuse_unknown_version("3.10.7")
    for other in ("3.11.0", "3.9.2", "4.0", "none"):
        with pytest.raises(UserError) as refused:
            pyinfra_internals.refuse_unknown_version(other)
        message = str(refused.value)
        assert "\n" not in message
        assert f"this environment has {other}" in message
        assert str(pyinfra_internals.TESTED) in message


def test_a_fact_is_read_once_until_an_operation_runs_on_the_host(names) -> None:
    hosts = run(["web"], "deploy_reading_twice", names, fake_responses={"cat /etc/x": "old"})
    result, commands = hosts["web"]
    # planning read it once (twice in the deploy, once more in report_config's plan);
    # `touch` dropped the cache, so report_config read it afresh when it ran
    assert commands == ["cat /etc/x", "touch /etc/x", "cat /etc/x", "echo stale"]
    assert [op.changed for op in result.ops] == [True, True]


def test_each_host_keeps_its_own_operation_names(names) -> None:
    hosts = run(["db", "web"], "deploy_by_role", names)
    assert op_names(hosts["db"][0]) == ["Database", "Database backup"]
    assert op_names(hosts["web"][0]) == ["Web"]  # not "Database, Web": same position, own name
    assert hosts["web"][1] == ["web"]
    assert hosts["db"][1] == ["db", "backup"]


def test_hosts_plan_at_once_and_each_runs_its_own_operations(names) -> None:
    web_planned.clear()
    hosts = run(["db", "web"], "deploy_waiting_for_web", names)
    assert op_names(hosts["db"][0]) == ["Database"]
    assert op_names(hosts["web"][0]) == ["Web first", "Web second"]
    assert hosts["db"][1] == ["db"]
    assert hosts["web"][1] == ["web1", "web2"]


def test_a_dry_run_reports_what_would_change_and_runs_nothing(names) -> None:
    result, commands = run(["web"], "deploy_conditional", names, dry_run=True)["web"]
    assert [(op.name, op.changed) for op in result.ops] == [
        ("Runs", True),
        ("Skipped by its condition", False),
        ("Already there", False),
    ]
    assert commands == []


def test_a_run_reports_changes_and_skips_what_its_condition_rules_out(names) -> None:
    result, commands = run(["web"], "deploy_conditional", names)["web"]
    assert [(op.name, op.changed) for op in result.ops] == [
        ("Runs", True),
        ("Skipped by its condition", False),
        ("Already there", False),
    ]
    assert commands == ["runs"]


def test_the_child_process_answers_with_results_and_facts(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # this module, for the child
    groups = {
        "postgres": [("@fake/db", FAKE)],
        "web": [("@fake/web", {**FAKE, "fake_responses": {"cat /etc/x": "from web"}})],
    }
    result = runner.run_deploy(groups, f"{__name__}:deploy_by_role", facts={"x": "cat /etc/x"})
    assert result.host_lines() == ["@fake/db: 2 changed", "    Database", "    Database backup",
                                   "@fake/web: 1 changed", "    Web"]
    assert result.hosts["@fake/web"].facts == {"x": "from web"}
    limited = runner.run_deploy(groups, f"{__name__}:deploy_by_role", limit=["web"], dry_run=True)
    assert list(limited.hosts) == ["@fake/web"]
    with pytest.raises(UserError, match="^--limit: no group or host named nope$"):
        runner.run_deploy(groups, f"{__name__}:deploy_by_role", limit=["nope"])


def test_the_hosts_of_a_run_are_every_host_or_those_the_limit_names() -> None:
    groups = {
        "postgres": [("db", {"ssh_user": "root"})],
        "agents": [("db", {"cmdop_agent": 1}), ("web", {})],
    }
    assert runner.select_hosts(groups, None) == {
        "db": {"ssh_user": "root", "cmdop_agent": 1},
        "web": {},
    }
    assert list(runner.select_hosts(groups, ["postgres"])) == ["db"]
    assert list(runner.select_hosts(groups, ["web"])) == ["web"]
    with pytest.raises(UserError, match="no group or host named x, y"):
        runner.select_hosts(groups, ["x", "agents", "y"])


# ----------------------------------------------- the fact cache's own rules, on a fake reader


@pytest.fixture
def counted_reads(monkeypatch):
    """A Host whose commands go nowhere, and a fact reader that counts (both restored)."""
    reads: list[str] = []
    commands: list[str] = []

    def read_fact(state, host, cls, args=None, kwargs=None, *rest, **more):
        host.run_shell_command(f"fact {args}")  # a fact runs a command too: no invalidation
        gevent.sleep(0)  # a remote read yields to the other greenlets
        reads.append(args)
        return {"value": args, "read": len(reads)}

    monkeypatch.setattr(facts_module, "_get_fact", read_fact)
    for name in ("run_shell_command", "put_file", "get_file"):
        monkeypatch.setattr(Host, name, lambda self, *a, **k: commands.append(a[0] if a else ""))
    pyinfra_internals.cache_facts_until_a_change()
    return Host.__new__(Host), reads, commands


def test_a_cached_fact_is_handed_out_as_a_copy_per_arguments(counted_reads) -> None:
    host, reads, _ = counted_reads
    first = facts_module._get_fact(None, host, object, "cat /x", {"_sudo": True})
    first["value"] = "changed by an operation"
    again = facts_module._get_fact(None, host, object, "cat /x", {"_sudo": True})
    assert again == {"value": "cat /x", "read": 1}
    assert reads == ["cat /x"]
    facts_module._get_fact(None, host, object, "cat /x", {"_sudo": False})  # other arguments
    assert len(reads) == 2


def test_only_the_host_that_ran_something_reads_afresh(counted_reads) -> None:
    host, reads, commands = counted_reads
    other = Host.__new__(Host)
    facts_module._get_fact(None, host, object, "cat /x")
    facts_module._get_fact(None, other, object, "cat /x")
    host.run_shell_command("systemctl restart x")  # an operation changed this host
    assert facts_module._get_fact(None, host, object, "cat /x")["read"] == 3
    assert facts_module._get_fact(None, other, object, "cat /x")["read"] == 2  # not that one
    host.put_file("src", "/etc/x")
    facts_module._get_fact(None, host, object, "cat /x")
    assert reads == ["cat /x"] * 4
    assert "systemctl restart x" in commands


def test_a_failed_read_is_not_cached(counted_reads, monkeypatch) -> None:
    host, _, _ = counted_reads
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise OSError("connection lost")

    # the cache wraps whatever _get_fact it found: install a failing reader underneath
    monkeypatch.setattr(facts_module, "_get_fact", failing)
    pyinfra_internals.cache_facts_until_a_change()
    for _ in range(2):
        with pytest.raises(OSError):
            facts_module._get_fact(None, host, object, "cat /y")
    assert len(calls) == 2


def test_two_reads_of_one_fact_at_once_make_one_remote_read(counted_reads) -> None:
    host, reads, _ = counted_reads
    both = [gevent.spawn(facts_module._get_fact, None, host, object, "cat /z") for _ in range(2)]
    gevent.joinall(both, raise_error=True)
    assert [g.value["read"] for g in both] == [1, 1]
    assert reads == ["cat /z"]
