"""Rollout planning and agent releases, without hosts: batches, limits, the release store."""

from pathlib import Path

import pytest
from cmdop_install import agent_releases, deploy, manage
from cmdop_install.errors import UserError
from cmdop_install.rollout import HostOutcome, Outcome, Rollout, make_plan, summary_lines
from cmdop_install.runner import HostResult, RunResult
from cmdop_install.sitedir import SiteDir
from cmdop_install.siteinit import init_site

from tests.support.sites import TEST_KEY, write_site

pytestmark = pytest.mark.unit

HOSTS = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(
    ("batch", "canary", "max_fail", "batches", "allowed"),
    [
        ("2", 0, "0", [["a", "b"], ["c", "d"], ["e"]], 0),
        ("2", 1, "0", [["a"], ["b", "c"], ["d", "e"]], 0),
        ("50%", 1, "20%", [["a"], ["b", "c", "d"], ["e"]], 1),  # 50 % of 5 rounds up to 3
        ("10%", 0, "1", [["a"], ["b"], ["c"], ["d"], ["e"]], 1),  # at least one host a batch
        ("100%", 9, "100%", [HOSTS], 5),  # more canaries than hosts: all are canaries
    ],
)
def test_plans(batch, canary, max_fail, batches, allowed) -> None:
    plan = make_plan(HOSTS, len(HOSTS), "1.0.0", batch, canary, max_fail)
    assert plan.batches == batches
    assert plan.allowed_failures == allowed
    assert sum(map(len, plan.batches)) == len(HOSTS)


def test_percentages_are_of_every_agent_so_a_resume_keeps_batch_sizes() -> None:
    plan = make_plan(["d", "e"], len(HOSTS), "1.0.0", "40%", 0, "0")
    assert plan.batches == [["d", "e"]]


@pytest.mark.parametrize(
    ("batch", "max_fail", "option"),
    [
        ("0", "0", "--batch-size"),
        ("150%", "0", "--batch-size"),
        ("two", "0", "--batch-size"),
        ("1", "-1", "--max-fail"),
        ("1", "x%", "--max-fail"),
    ],
)
def test_bad_options_are_one_clear_error(batch, max_fail, option) -> None:
    with pytest.raises(UserError) as err:
        make_plan(HOSTS, 5, "1.0.0", batch, 0, max_fail)
    assert err.value.message.startswith(f"{option} ")


def test_summary_says_per_host_what_happened() -> None:
    outcome = Outcome(
        "0.2.0",
        {
            "web1": HostOutcome("web1", "0.1.0", "0.2.0", "upgraded"),
            "web2": HostOutcome(
                "web2",
                "0.1.0",
                "0.1.0",
                "failed",
                "; it is offline after 60 s; rolled back to 0.1.0, online",
            ),
            "web3": HostOutcome("web3", "0.1.0"),
        },
    )
    lines = summary_lines(outcome)
    assert lines[0].split() == ["HOST", "BEFORE", "NOW", "RESULT"]
    assert lines[1].split() == ["web1", "0.1.0", "0.2.0", "upgraded"]
    assert lines[2].endswith("failed: it is offline after 60 s; rolled back to 0.1.0, online")
    assert lines[3].split() == ["web3", "0.1.0", "0.1.0", "untouched"]


@pytest.mark.parametrize("version", ["1.2", "latest", "1.2.3; rm -rf /", "../1.2.3"])
def test_a_version_that_is_not_one_is_refused(tmp_path: Path, version: str) -> None:
    with pytest.raises(UserError, match="not a version like 1.2.3"):
        agent_releases.find(tmp_path, version)


def test_an_added_release_wheel_becomes_a_wheelhouse(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(agent_releases.wheelhouse, "cache_dir", lambda: tmp_path / "cache")
    wheel = tmp_path / "cmdop_agent-0.2.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a zip; only its bytes are hashed here")
    folder = agent_releases._wheelhouse_of(wheel, "0.2.0")
    assert sorted(p.name for p in folder.iterdir()) == [
        ".complete",
        "cmdop_agent-0.2.0-py3-none-any.whl",
        "requirements.txt",
    ]
    assert (folder / "requirements.txt").read_text() == "cmdop-agent==0.2.0\n"
    described = agent_releases.wheelhouse.describe(folder, "cmdop-agent")
    assert described["package_wheel"] == wheel.name
    assert agent_releases._wheelhouse_of(wheel, "0.2.0") == folder  # cached by content


def test_one_probe_reads_releases_and_the_fleet_also_on_a_single_node_site(
    tmp_path: Path, monkeypatch
) -> None:
    """The rollout connects to its hosts once before the first batch; where the control plane
    is also an agent host, its probe carries the agent's facts as well as the fleet's."""
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site_dir = tmp_path / "site"
    write_site(site_dir, agents=True)
    inventory = site_dir / "inventory.py"
    inventory.write_text(inventory.read_text().replace("agents = [", "agents = [_node1, "))
    init_site(site_dir)
    site = SiteDir.load(site_dir)
    fleet_command = manage.fleet_status_command(site.name)
    rounds = []

    def read_facts(groups, facts, limit=None, host_facts=None):
        rounds.append(sorted(limit or []))
        answers = {deploy.OS_COMMAND: "debian-12",
                   agent_releases.CURRENT_RELEASE_COMMAND: "0.1.0",
                   fleet_command: '{"hostname": "node1", "agent_version": "0.1.0"}'}
        return RunResult({name: HostResult(name, facts={
            label: answers.get(command, f"{name}.example")
            for label, command in (host_facts or {}).get(name, facts).items()
        }) for name in limit or []}, dry_run=False)

    monkeypatch.setattr(deploy, "read_facts", read_facts)
    releases, fleet = Rollout(site, print, health_timeout=5).probe()
    assert rounds == [["agent1", "node1"]]
    assert releases == {"node1": ("0.1.0", "node1.example"),
                        "agent1": ("0.1.0", "agent1.example")}
    assert fleet == {"node1": {"hostname": "node1", "agent_version": "0.1.0"}}
