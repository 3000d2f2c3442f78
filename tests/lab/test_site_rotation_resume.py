"""`cmdop-install rotate` killed at every phase boundary and in the middle of a phase, on the
deployed lab site (conftest ``site``): each rerun resumes where the record says it stopped,
with the same new values, and the site works at the end (an agent session runs a command).

The CLI runs in a process group of its own and the whole group is killed with SIGKILL (the
CLI and the deploy child it started, as a closed terminal or an OOM kill would leave it):
no cleanup code runs. Where to kill is read from ``rotation.json`` as the CLI writes it, and
"mid-phase" is once the phase's deploy child exists. Runs after test_site_rotation_agents
(file order) and before uninstall; leaves the site rotated and healthy.

The rotation host's sshd stopped (the host and the site up) stops a rotation at its first
deploy in one line, exit non-zero, with nothing changed there; once SSH is back the rerun
completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cmdop_install import rotation_state
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.rotation_state import PHASES
from cmdop_install.secrets import SecretStore
from cmdop_install.site import load_site
from cmdop_install.site_api import SiteApi

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import cli, lab_ssh

pytestmark = pytest.mark.lab

NAMES = ("django_secret_key", "postgres_password_blue")
PHASE_TIMEOUT = 240.0  # one phase's deploy on a busy two-core machine, with room


def _record(site_dir: Path) -> dict | None:
    path = site_dir / "rotation.json"
    return json.loads(path.read_text())["rotation"] if path.exists() else None


def _deploy_child_running(pgid: int, cli_pid: int) -> bool:
    """Whether a live process other than the CLI is in its group (the runner's deploy child;
    a killed one may stay a zombie until something reaps it)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != cli_pid:
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                return True
    return False


def _killed_at(site_dir: Path, args: tuple[str, ...],
               where: Callable[[dict | None, int], bool]) -> None:
    """Run ``rotate SITE *args`` and SIGKILL its process group once ``where(record, pid)``;
    the CLI must not finish first."""
    proc = subprocess.Popen([sys.executable, "-m", "cmdop_install.cli", "rotate", str(site_dir),
                             *args, "--yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + PHASE_TIMEOUT
    try:
        while not where(_record(site_dir), proc.pid):
            assert proc.poll() is None, f"rotate ended before the kill: {proc.communicate()}"
            assert time.monotonic() < deadline, "timed out waiting for the point to kill at"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    # the deploy child dies with its group: nothing of this run goes on behind the rerun
    deadline = time.monotonic() + 30
    while _deploy_child_running(proc.pid, -1):
        assert time.monotonic() < deadline, "the killed rotation's processes are still there"
        time.sleep(0.1)


def _at(phase: str, done: bool) -> Callable[[dict | None, int], bool]:
    return lambda record, pid: bool(record and (record["phase"], record["done"]) == (phase, done))


def _boundary(phase: str) -> Callable[[dict | None, int], bool]:
    """Between ``phase`` and the next: the record says ``phase`` is done, or already names the
    next one (the CLI moves on in milliseconds, so the kill may land just inside it)."""
    after = PHASES[PHASES.index(phase) + 1]
    return lambda record, pid: _at(phase, True)(record, pid) or _at(after, False)(record, pid)


def _mid(phase: str) -> Callable[[dict | None, int], bool]:
    return lambda record, pid: _at(phase, False)(record, pid) and _deploy_child_running(pid, pid)


def _resumed(site_dir: Path, *args: str) -> list[str]:
    """A rerun that completes: the phases it went through, in order."""
    out = cli("rotate", str(site_dir), *args, "--yes")
    return [line.split(":")[0].removeprefix("phase ") for line in out.stdout.splitlines()
            if line.startswith("phase ") and line.split(":")[1].startswith(" done")]


def _new_key(site) -> str:
    """The rotation's new Django key: still staged, or already promoted by the switch."""
    store = SecretStore.open(site.dir, load_site(site.dir)["site"]["key_file"])
    values = store.values(admit=("django_secret_key",))
    return values.get("django_secret_key:next", values["django_secret_key"])


def _current(site) -> dict[str, str]:
    return SecretStore.open(site.dir, load_site(site.dir)["site"]["key_file"]).values()


def _site_api(lab, site, name: str) -> SiteApi:
    """The site's user API with a new API key of the workspace's Owner (made over SSH)."""
    config = load_site(site.dir)
    workspace = config["site"]["name"]
    out = lab_ssh(lab, "host1", "sudo " + api_key_command(workspace, name))
    assert out.returncode == 0, out.stderr
    return SiteApi(lab.host("host1").ip, config["site"]["domain"], site.ca,
                   parse_api_key(out.stdout)[1], workspace)


def _runs_a_command(api: SiteApi, marker: str) -> bool:
    machine = api.wait_online(AGENT_HOSTS)[AGENT_HOSTS[-1]]
    return bool(api.run_in_session(machine["machine_id"], f"echo {marker}-$((6*7))",
                                   f"{marker}-42".encode()))


def test_a_rotation_killed_at_each_phase_boundary_and_mid_phase_resumes(lab, site) -> None:
    assert _record(site.dir) is None, "another rotation is in progress on the lab site"
    before = _current(site)
    active_before = (rotation_state.load(site.dir)["active_role"]
                     or load_site(site.dir)["postgres"]["active_role"])

    _killed_at(site.dir, NAMES, _boundary("staged"))
    new_key = _new_key(site)
    assert new_key != before["django_secret_key"]
    _killed_at(site.dir, (), _boundary("admitted"))
    assert _new_key(site) == new_key  # a resumed rotation reuses its staged values
    _killed_at(site.dir, (), _mid("switched"))  # while the switch's deploy runs
    assert _resumed(site.dir) == ["switched"]  # the switch again, nothing before it

    record = _record(site.dir)
    assert record is not None and (record["phase"], record["done"]) == ("switched", True)
    assert [p for p, _ in record["history"]] == ["staged", "admitted", "switched"]
    now = _current(site)
    assert now["django_secret_key"] == new_key
    assert now["django_secret_key:previous"] == before["django_secret_key"]
    assert rotation_state.load(site.dir)["active_role"] == rotation_state.idle_role(active_before)

    _killed_at(site.dir, ("--finish",), _mid("retired"))  # while the old values are destroyed
    assert _resumed(site.dir, "--finish") == ["retired"]
    assert _record(site.dir) is None
    assert "django_secret_key:previous" not in _current(site)

    # the site works on the new values: an agent session runs a command through it
    assert _runs_a_command(_site_api(lab, site, "lab-rotation-resume"), "resumed")
    site.secrets.clear()
    site.secrets.update(_current(site))  # later lab tests read the site's current secrets


def _sshd(lab, host: str, action: str) -> None:
    """Stop or start ``host``'s sshd from outside (podman exec): the host and its services
    keep running, only SSH refuses connections meanwhile."""
    done = subprocess.run(["podman", "exec", lab.host(host).container, "systemctl", action,
                           "ssh.service"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_a_host_unreachable_mid_rotation_stops_it_in_one_line_and_a_rerun_completes(
        lab, site) -> None:
    assert _record(site.dir) is None, "another rotation is in progress on the lab site"
    before = _current(site)
    api = _site_api(lab, site, "lab-rotation-unreachable")
    # the Django key alone: staged and admitted need no host, so the switch is the first
    # phase that reaches host1 and meets it unreachable
    _sshd(lab, "host1", "stop")
    try:
        stopped = cli("rotate", str(site.dir), "django_secret_key", "--yes", check=False)
        record = _record(site.dir)
        # the site is untouched and serves on: an agent session runs a command through it
        assert _runs_a_command(api, "unreachable")
    finally:
        _sshd(lab, "host1", "start")
    assert stopped.returncode != 0, stopped.stdout
    errors = stopped.stderr.splitlines()
    assert len(errors) == 1, stopped.stderr
    assert errors[0].startswith("cmdop-install: error: rotation stopped in phase switched: ")
    assert "host1" in errors[0] and f"rerun `cmdop-install rotate {site.dir}`" in errors[0]
    assert record is not None and (record["phase"], record["done"]) == ("switched", False)

    assert _resumed(site.dir) == ["switched"]
    assert _resumed(site.dir, "--finish") == ["retired"]
    assert _record(site.dir) is None
    assert _current(site)["django_secret_key"] != before["django_secret_key"]
    assert _runs_a_command(api, "reachable")
    site.secrets.clear()
    site.secrets.update(_current(site))
