"""`agents rollout` on the deployed site (conftest ``site``): four agent hosts, batches of two.

Runs after test_site_deploy (file order): it changes the agents' release.
"""

import json
import shutil
from pathlib import Path

import pytest
from cmdop_install.deploy import deploy_site
from cmdop_install.sitedir import SiteDir

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import cli, lab_ssh
from tests.support.agent_release import build_agent_wheel

pytestmark = pytest.mark.lab

OLD, NEW = "0.1.0", "0.1.1"
FAULT = "/etc/systemd/system/cmdop-agent.service.d/test-fault.conf"


def hosts_state(lab) -> dict[str, tuple[str, str]]:
    """host -> (release `current` points at, agent's MainPID start time)."""
    state = {}
    for name in AGENT_HOSTS:
        out = lab_ssh(
            lab,
            name,
            "basename $(readlink /opt/cmdop-agent/current); "
            "systemctl show -p ExecMainStartTimestampMonotonic --value cmdop-agent",
        )
        release, started = out.stdout.split()
        state[name] = (release, started)
    return state


def fleet(site) -> dict[str, dict]:
    info = json.loads(cli("status", str(site.dir), "--json").stdout)
    return {h["host"]: h["components"][0] for h in info["hosts"] if h["host"] in AGENT_HOSTS}


def test_rollout_stops_at_a_failing_host_rolls_it_back_and_resumes(lab, site, tmp_path) -> None:
    releases = site.dir / "agent-releases"
    releases.mkdir(exist_ok=True)
    shutil.copy(build_agent_wheel(NEW, tmp_path), releases)
    before = hosts_state(lab)
    assert {release for release, _ in before.values()} == {OLD}
    # host3's agent cannot start on the new release (its old one still can)
    fault = (
        f"sudo mkdir -p {Path(FAULT).parent} && printf '[Service]\\nExecStartPre=/bin/sh -c "
        f'"readlink /opt/cmdop-agent/current | grep -qv {NEW}"\\n\' | sudo tee {FAULT} '
        "&& sudo systemctl daemon-reload"
    )
    assert lab_ssh(lab, "host3", fault).returncode == 0
    args = [
        "agents",
        "rollout",
        str(site.dir),
        "--version",
        NEW,
        "--batch-size",
        "2",
        "--max-fail",
        "0",
        "--canary",
        "0",
        "--health-timeout",
        "40",
    ]
    stopped = cli(*args, check=False)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "rollout of 0.1.1 stopped: 1 failure(s)" in stopped.stderr
    summary = {line.split()[0]: line for line in stopped.stdout.splitlines()}
    assert "upgraded" in summary["host2"]
    assert "failed" in summary["host3"] and "rolled back to 0.1.0, online" in summary["host3"]
    assert summary["host4"].split()[1:] == [OLD, OLD, "untouched"]
    after = hosts_state(lab)
    assert after["host2"][0] == NEW
    assert after["host3"][0] == OLD
    for name in ("host4", "host5"):
        assert after[name] == before[name], f"{name} was touched"
        gone = lab_ssh(lab, name, f"test -e /opt/cmdop-agent/releases/{NEW} && echo present")
        assert gone.stdout.strip() == ""
    online = fleet(site)
    assert online["host3"]["online"] and online["host3"]["version"] == OLD
    assert json.loads((site.dir / "rollout.json").read_text())["status"] == "stopped"

    # fixed: the rerun resumes; host2 is done already and is not restarted
    assert lab_ssh(lab, "host3", f"sudo rm {FAULT} && sudo systemctl daemon-reload").returncode == 0
    resumed = cli(*args)
    assert "resuming the rollout of 0.1.1" in resumed.stdout
    assert (
        "already on it" in {line.split()[0]: line for line in resumed.stdout.splitlines()}["host2"]
    )
    final = hosts_state(lab)
    assert final["host2"] == after["host2"], "host2 was restarted although it was done"
    assert {release for release, _ in final.values()} == {NEW}
    assert all(row["online"] and row["version"] == NEW for row in fleet(site).values())
    assert json.loads((site.dir / "rollout.json").read_text())["status"] == "complete"

    # a deploy leaves versions to the rollout: nothing changes
    again = deploy_site(SiteDir.load(site.dir))
    assert again.failed == [] and again.changes == 0, {
        h.name: [o.name for o in h.ops if o.changed] for h in again.hosts.values()
    }


def test_rollout_refuses_an_unknown_version_before_touching_anything(site) -> None:
    out = cli("agents", "rollout", str(site.dir), "--version", "9.9.9", check=False)
    assert out.returncode == 1
    assert out.stderr.startswith("cmdop-install: error: no agent release 9.9.9: available are")
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("option", "value"), [("--batch-size", "0"), ("--batch-size", "150%"), ("--max-fail", "x")]
)
def test_rollout_refuses_bad_batch_options(site, option, value) -> None:
    out = cli("agents", "rollout", str(site.dir), option, value, check=False)
    assert out.returncode == 1
    assert out.stderr.startswith(f"cmdop-install: error: {option} ")
