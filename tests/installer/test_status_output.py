"""`status` on a real site folder, the hosts faked at the runner boundary (read_facts): each
host is asked only about its own components, an unreachable host is one row saying why while
the others are shown, and every deploy (deploy_site: deploy, the demo, a rollout's batches;
a rollout's rollback) is the last deploy status reports."""

from pathlib import Path

import pytest
from cmdop_install import deploy, rollout, status
from cmdop_install.cli import main
from cmdop_install.rollout import HostOutcome, Outcome, Rollout
from cmdop_install.runner import UNREACHABLE, HostResult, OpResult, RunResult
from cmdop_install.sitedir import SiteDir

from tests.support.sites import TEST_KEY, make_site

pytestmark = pytest.mark.unit


@pytest.fixture
def site_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    return make_site(tmp_path / "site", agents=True)


class Hosts:
    """node1 answers what it is asked; agent1 cannot be reached."""

    def __init__(self) -> None:
        self.asked: dict[str, dict[str, str]] = {}

    def read_facts(self, groups, facts, limit=None, host_facts=None) -> RunResult:
        if "fleet" in facts:  # the control plane's view of its agents: not there either
            return RunResult({"node1": HostResult("node1", error=UNREACHABLE)}, dry_run=False)
        self.asked = host_facts
        node1 = {label: "active" if label.endswith(".state") else "1.0"
                 for label in host_facts["node1"]}
        return RunResult({"node1": HostResult("node1", facts=node1),
                          "agent1": HostResult("agent1", error=UNREACHABLE)}, dry_run=False)


@pytest.fixture
def hosts(monkeypatch) -> Hosts:
    fake = Hosts()
    monkeypatch.setattr(status, "read_facts", fake.read_facts)
    return fake


def test_each_host_is_asked_only_about_its_own_components(site_dir, hosts):
    status.site_status(SiteDir.load(site_dir))
    agent = " ".join(hosts.asked["agent1"].values())
    assert "postgresql" not in agent and "redis" not in agent and "nginx" not in agent
    assert set(hosts.asked["agent1"]) == {"hostname", "agents.state", "agents.version"}
    node = " ".join(hosts.asked["node1"].values())
    assert "postgresql-" in node and "redis-server" in node and "nginx" in node
    assert "cmdop-agent" not in node
    assert "control_plane.restart_pending" in hosts.asked["node1"]


def test_an_unreachable_host_is_one_row_and_the_others_are_shown(site_dir, hosts, capsys):
    assert main(["status", str(site_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    agent_rows = [line for line in out if "agent1" in line]
    assert agent_rows == [f"agent1 (127.0.0.2)  unreachable: {UNREACHABLE}"]
    start = out.index("node1 (127.0.0.1)")
    assert [line.split()[0] for line in out[start + 1:start + 5]] == [
        "postgres", "redis", "control_plane", "nginx"]
    assert out[0] == "site testsite; last deploy: never"


def test_every_deploy_through_deploy_site_is_the_last_deploy(site_dir, hosts, monkeypatch,
                                                            capsys):
    converged = iter([RunResult({"node1": HostResult("node1")}, dry_run=False),
                      RunResult({"node1": HostResult("node1"),
                                 "agent1": HostResult("agent1", error=UNREACHABLE)},
                                dry_run=False)])
    monkeypatch.setattr(deploy, "preflight", lambda inventory, limit: None)
    monkeypatch.setattr(deploy, "wheelhouse_facts", lambda package: {})
    monkeypatch.setattr(deploy, "_converge", lambda *args: next(converged))
    for _ in range(2):  # what `demo` does: the control plane, then the whole site
        deploy.deploy_site(SiteDir.load(site_dir))
    last = status.last_deploy(site_dir)
    assert last is not None and last["failed"] == ["agent1"]
    assert main(["status", str(site_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"site testsite; last deploy: {last['at']} (")


def test_a_rollouts_rollback_is_the_last_deploy(site_dir, monkeypatch):
    back = RunResult({"agent1": HostResult("agent1", [OpResult("Agent release", True, False)])},
                     dry_run=False)
    monkeypatch.setattr(rollout, "run_deploy", lambda *args, **kwargs: back)
    outcome = Outcome("0.2.0", {"agent1": HostOutcome("agent1", "0.1.0", result="failed")})
    Rollout(SiteDir.load(site_dir), lambda line: None, 1).roll_back(["agent1"], outcome, {})
    last = status.last_deploy(site_dir)
    assert last is not None and (last["changes"], last["failed"]) == (1, ["agent1"])
    assert "rollback failed" in outcome.hosts["agent1"].detail
