"""``rotate SITE agent_credentials`` in the phase machine, on a real site folder.

The control plane's ``machine_credentials`` command is the fake here (a small model of the
handover states that tests/server_sessions/test_machine_credential_handover.py proves on the
real control plane and agent); the deploy is faked as in test_rotation.py. What is checked:
which phase opens, waits for, closes or cancels the handovers, what the operator is told
about each agent, and that an interruption resumes and an unknown agent state is named.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cmdop_install import agent_credentials, manage, rotation
from cmdop_install.cli import main
from cmdop_install.errors import UserError
from cmdop_install.rotation import Rotation, resolve
from cmdop_install.runner import HostResult, RunResult
from cmdop_install.sitedir import SiteDir
from cmdop_install.status import record_deploy

from tests.support.sites import TEST_KEY, make_site, rotation_step

pytestmark = pytest.mark.unit


class Plane:
    """The control plane's machines as ``machine_credentials`` reports them. Online agents
    confirm their new credential after ``confirm_after`` reads; offline ones never do."""

    def __init__(self, **online: bool) -> None:
        self.machines = {host: {"hostname": host, "machine_id": f"m_{host}", "online": up,
                                "credential": "current", "handover_until": None}
                         for host, up in online.items()}
        self.actions: list[str] = []
        self.reads = 0
        self.confirm_after = 2
        self.down = False

    def read(self, site: SiteDir, action: str = "") -> dict[str, dict]:
        if self.down:
            raise UserError("node1: cannot reach the control plane's machine credentials: "
                            "cannot connect over ssh")
        self.actions.append(action or "read")
        self.reads += 1
        for m in self.machines.values():
            if action == "open" and m["credential"] == "current":
                m.update(credential="handover_open", handover_until="2026-12-04T20:00:00")
            elif action == "close" and m["credential"].startswith("handover"):
                m["credential"] = "lapsed"
            elif action == "cancel" and m["credential"].startswith("handover"):
                m.update(credential="current", handover_until=None)
            elif (not action and m["online"] and m["credential"].startswith("handover")
                  and self.reads > self.confirm_after):
                m.update(credential="current", handover_until=None)
        return {h: dict(m) for h, m in self.machines.items()}


@pytest.fixture
def site_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    return make_site(tmp_path / "site")


@pytest.fixture
def deploys(monkeypatch) -> list[str]:
    seen: list[str] = []

    def deploy(site, limit=None, dry_run=False):
        seen.append("deploy")
        return RunResult(hosts={"node1": HostResult("node1")}, dry_run=False)

    monkeypatch.setattr(rotation, "deploy_site", deploy)
    return seen


@pytest.fixture
def plane(monkeypatch) -> Plane:
    fake = Plane(web1=True, web2=True, db9=False)
    monkeypatch.setattr(agent_credentials, "read_machines", fake.read)
    monkeypatch.setattr(agent_credentials, "POLL_SECONDS", 0.0)
    return fake


def _run(site_dir: Path, action: str = "rotate", names=("agent_credentials",)) -> list[str]:
    return rotation_step(site_dir, action, tuple(names))


def test_switch_waits_for_online_agents_and_finish_lapses_the_absent_one(site_dir, deploys,
                                                                         plane):
    lines = _run(site_dir)
    assert plane.actions[0] == "open" and set(plane.actions[1:]) == {"read"}
    assert deploys == []  # nothing in secrets.enc changes: no deploy
    assert {h: m["credential"] for h, m in plane.machines.items()} == {
        "web1": "current", "web2": "current", "db9": "handover_open"}
    assert "agent credentials: 2 of 3 agents on their current credential" in lines
    assert any(line.startswith("  db9: offline; takes its new credential when it comes back "
                               "before 2026-12-04T20:00:00") for line in lines)

    lines = _run(site_dir, "finish")
    assert plane.actions[-1] == "close"
    assert plane.machines["db9"]["credential"] == "lapsed"
    assert any(line.startswith("  db9: LAPSED: its agent is refused until an Admin issues it")
               and "machines/m_db9/credential" in line for line in lines)
    assert lines[-1].startswith("finished:")


def test_the_wait_for_online_agents_is_bounded(site_dir, deploys, plane, monkeypatch):
    plane.confirm_after = 10**6  # agents too old for handovers never confirm
    monkeypatch.setattr(agent_credentials, "WAIT_SECONDS", 0.0)
    lines = _run(site_dir)
    assert plane.actions == ["open"]  # no wait past the bound: the switch is done
    assert any(line.startswith("  web1: online but has not taken its new credential yet")
               for line in lines)


def test_an_unreachable_control_plane_stops_the_switch_and_a_rerun_resumes(site_dir, deploys,
                                                                           plane):
    plane.down = True
    with pytest.raises(UserError) as stopped:
        _run(site_dir)
    assert stopped.value.message.startswith("rotation stopped in phase switched: node1: "
                                            "cannot reach the control plane's machine")
    assert "rerun `cmdop-install rotate" in stopped.value.message
    plane.down = False
    _run(site_dir, names=())
    assert plane.actions[0] == "open"
    assert plane.machines["web1"]["credential"] == "current"


def test_rollback_from_the_switch_cancels_the_handovers(site_dir, deploys, plane):
    _run(site_dir)
    lines = _run(site_dir, "rollback")
    assert plane.actions[-1] == "cancel"
    assert plane.machines["db9"]["credential"] == "current"
    assert lines[-1].startswith("rolled back")


def test_all_includes_agents_with_the_secrets_and_dry_run_names_both(site_dir, deploys, plane):
    assert resolve((), True)[-2:] == ["agent_credentials", "pki_ca"]
    lines: list[str] = []
    Rotation(SiteDir.load(site_dir), lines.append, dry_run=True).start_or_resume(
        resolve((), True))
    switched = [line for line in lines if line.startswith("would enter phase switched")]
    assert len(switched) == 1 and "each agent takes a new machine credential" in switched[0]
    assert plane.actions == [] and deploys == []


def test_the_management_command_lines():
    assert manage.machine_credentials_command("acme", "open", 604800).endswith(
        "cmdop-server machine_credentials --workspace acme --open --grace 604800")
    assert manage.machine_credentials_command("acme").endswith(
        "machine_credentials --workspace acme")
    for action in ("close", "cancel"):
        assert manage.machine_credentials_command("acme", action).endswith(f"--{action}")


def test_check_warns_about_old_machine_credentials_of_a_deployed_site_only(site_dir, plane,
                                                                           capsys):
    for m, days in zip(plane.machines.values(), (200, 95, 1), strict=True):
        m["rotated_at"] = (datetime.now(UTC) - timedelta(days=days)).isoformat()
    assert main(["check", str(site_dir)]) == 0
    assert "agents:" not in capsys.readouterr().out
    assert plane.reads == 0  # never deployed: no agent yet, no host is reached

    record_deploy(site_dir, 0, [])
    assert main(["check", str(site_dir)]) == 0
    out = capsys.readouterr().out
    assert (f"warning: agents: 2 of 3 machines have a credential older than [rotation] "
            f"max_age_days = 90 (the oldest 200 days): `cmdop-install rotate {site_dir} "
            "agent_credentials`") in out.splitlines()
    assert plane.actions == ["read"]  # read only: check changes nothing on the plane

    plane.down = True  # a warning, not a failure: the site's files are what check judges
    assert main(["check", str(site_dir)]) == 0
    assert ("warning: agents: machine credential ages not read (node1: cannot reach the "
            "control plane's machine credentials: cannot connect over ssh)"
            in capsys.readouterr().out.splitlines())
