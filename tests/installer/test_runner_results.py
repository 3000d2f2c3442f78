"""What the runner hands back: per-host lines for the CLI, per-host data for pyinfra."""

import pytest
from cmdop_install.runner import HostResult, OpResult, RunResult, with_host_data

pytestmark = pytest.mark.unit


def test_host_lines_show_changes_failures_and_unreachable_hosts() -> None:
    result = RunResult(
        {
            "web1": HostResult(
                "web1", [OpResult("Files", True, True), OpResult("Ok", False, True)]
            ),
            "web2": HostResult("web2", [OpResult("Restart", False, False)]),
            "web3": HostResult("web3", error="cannot connect over ssh"),
        },
        dry_run=False,
    )
    assert result.host_lines() == [
        "web1: 1 changed", "    Files",
        "web2: 0 changed", "    FAILED Restart",
        "web3: FAILED: cannot connect over ssh",
    ]
    assert result.host_lines("would change")[0] == "web1: 1 would change"


def test_host_data_reaches_a_host_in_every_group_and_leaves_the_rest() -> None:
    groups = {"postgres": [("db", {"ssh_user": "root"})],
              "agents": [("db", {"ssh_user": "root"}), ("web", {})]}
    added = with_host_data(groups, {"db": {"cmdop_rollback_to": "0.1.0"}})
    assert added["postgres"] == [("db", {"ssh_user": "root", "cmdop_rollback_to": "0.1.0"})]
    assert added["agents"][1] == ("web", {})
    assert groups["postgres"] == [("db", {"ssh_user": "root"})]  # the caller's stays as it was


@pytest.mark.integration
def test_a_host_that_refuses_ssh_is_reported_once_with_why(capfd) -> None:
    """A port nobody listens on (loopback): the host's error says SSH refused it and why, and
    pyinfra's own log line for it stays off stderr (commands report it in one line)."""
    from cmdop_install.runner import UNREACHABLE, read_facts

    from tests.support.services import free_port

    port = free_port()
    result = read_facts({"postgres": [("ghost", {"ssh_hostname": "127.0.0.1",
                                                 "ssh_port": port})]}, {"os": "true"})
    error = result.hosts["ghost"].error
    assert error.startswith(f"{UNREACHABLE}: ") and f"port {port}" in error, error
    assert "Could not connect" not in capfd.readouterr().err
