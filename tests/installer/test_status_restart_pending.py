"""status tells an installed control plane from the one serving: the fact's shell command,
run by a real shell against a stand-in systemctl and a virtualenv's dist-info."""

import os
import subprocess
from datetime import UTC, datetime

import pytest
from cmdop_install.status import restart_pending_command

pytestmark = pytest.mark.unit

INSTALLED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def _pending(tmp_path, started: str | None, installed: bool = True) -> str:
    venv = tmp_path / "venv"
    if installed:
        dist = venv / "lib/python3.11/site-packages/cmdop_server-0.2.0.dist-info"
        dist.mkdir(parents=True)
        os.utime(dist, (INSTALLED, INSTALLED))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    systemctl = stubs / "systemctl"
    systemctl.write_text(f"#!/bin/sh\necho '{started or ''}'\n")
    systemctl.chmod(0o755)
    done = subprocess.run(["bash", "-c", restart_pending_command(str(venv))], text=True,
                          capture_output=True, check=True, timeout=30,
                          env={"PATH": f"{stubs}:/usr/bin:/bin", "TZ": "UTC"})
    return done.stdout.strip()


@pytest.mark.parametrize("started, installed, pending", [
    ("Sun 2026-03-01 11:00:00 UTC", True, "yes"),  # running code predates the install
    ("Sun 2026-03-01 13:00:00 UTC", True, "no"),  # restarted onto it
    (None, True, "no"),  # not running: nothing is serving
    ("Sun 2026-03-01 11:00:00 UTC", False, "no"),  # nothing installed
])
def test_a_service_older_than_its_install_is_pending_a_restart(tmp_path, started, installed,
                                                                pending):
    assert _pending(tmp_path, started, installed) == pending
