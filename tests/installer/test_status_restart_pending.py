"""status tells the release installed (`current`) from the ones serving: the fact's shell
command, run by a real shell against a stand-in systemctl naming a real process whose
children (the stand-in workers) run in release folders, as gunicorn's workers do."""

import subprocess
import sys
import time

import pytest
from cmdop_install.status import restart_pending_command

pytestmark = pytest.mark.unit


def _pending(tmp_path, workers_in: list[str], running: bool = True) -> str:
    releases = tmp_path / "releases"
    for name in ("k1", "k2"):
        (releases / name / "venv").mkdir(parents=True)
    (tmp_path / "current").symlink_to(releases / "k2")
    # a master whose children start in the given releases and wait for it to end
    spawn = " ".join(f"(cd {releases / r / 'venv'} && exec sleep 60) &" for r in workers_in)
    master = subprocess.Popen(["bash", "-c", f"{spawn} wait"])
    try:
        # a child is listed from its fork, before its cd: wait until each one is sleep
        # (exec'd, so in its release folder)
        deadline = time.monotonic() + 30
        while [_command(c) for c in _children(master.pid)] != ["sleep"] * len(workers_in):
            assert time.monotonic() < deadline, "the stand-in workers did not start"
            time.sleep(0.05)
        stubs = tmp_path / "bin"
        stubs.mkdir()
        systemctl = stubs / "systemctl"
        systemctl.write_text(f"#!/bin/sh\necho {master.pid if running else 0}\n")
        systemctl.chmod(0o755)
        command = restart_pending_command(str(tmp_path / "current/venv"))
        done = subprocess.run(["bash", "-c", command], text=True, capture_output=True,
                              check=True, timeout=30, env={"PATH": f"{stubs}:/usr/bin:/bin"})
        return done.stdout.strip()
    finally:
        for child in _children(master.pid):
            subprocess.run(["kill", child], check=False)
        master.wait(timeout=30)


def _command(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except FileNotFoundError:
        return ""


def _children(pid: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                          check=False).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("workers_in, running, pending", [
    (["k2", "k2"], True, "no"),  # every worker imported the current release
    (["k1", "k1"], True, "yes"),  # the switch has not reached gunicorn (a failed deploy)
    (["k1", "k2"], True, "yes"),  # old workers still finishing their requests
    (["k1"], False, "no"),  # not running: nothing is serving
])
def test_workers_of_another_release_than_current_are_pending(tmp_path, workers_in, running,
                                                             pending):
    assert _pending(tmp_path, workers_in, running) == pending
