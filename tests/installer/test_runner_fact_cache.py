"""The runner's fact cache: one remote read per fact and host, until the host changes."""

import pyinfra.api.facts as facts_module
import pytest
from cmdop_install import runner
from pyinfra.api.host import Host

pytestmark = pytest.mark.unit


@pytest.fixture
def fake_host(monkeypatch):
    """A Host whose commands go nowhere, and a fact reader that counts (both restored)."""
    reads: list[str] = []
    commands: list[str] = []

    def read_fact(state, host, cls, args=None, kwargs=None, *rest, **more):
        host.run_shell_command(f"fact {args}")  # a fact runs a command too: no invalidation
        reads.append(args)
        return {"value": args, "read": len(reads)}

    monkeypatch.setattr(facts_module, "_get_fact", read_fact)
    for name in ("run_shell_command", "put_file", "get_file"):
        monkeypatch.setattr(Host, name, lambda self, *a, **k: commands.append(a[0] if a else ""))
    runner._cache_facts_until_a_change()
    return Host.__new__(Host), reads, commands


def test_a_fact_is_read_once_and_handed_out_as_a_copy(fake_host) -> None:
    host, reads, _ = fake_host
    first = facts_module._get_fact(None, host, object, "cat /x", {"_sudo": True})
    first["value"] = "changed by an operation"
    again = facts_module._get_fact(None, host, object, "cat /x", {"_sudo": True})
    assert again == {"value": "cat /x", "read": 1}
    assert reads == ["cat /x"]
    facts_module._get_fact(None, host, object, "cat /x", {"_sudo": False})  # other arguments
    assert len(reads) == 2


def test_a_command_that_is_not_a_fact_makes_the_host_read_afresh(fake_host) -> None:
    host, reads, commands = fake_host
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


def test_a_failed_read_is_not_cached(fake_host, monkeypatch) -> None:
    host, _, _ = fake_host
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise OSError("connection lost")

    # the cache wraps whatever _get_fact it found: install a failing reader underneath
    monkeypatch.setattr(facts_module, "_get_fact", failing)
    runner._cache_facts_until_a_change()
    for _ in range(2):
        with pytest.raises(OSError):
            facts_module._get_fact(None, host, object, "cat /y")
    assert len(calls) == 2
