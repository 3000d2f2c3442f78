"""The real agent as an ordinary user (``nobody`` via setpriv), without --allow-root, the
way it is meant to run, against the real control plane. Uses the system python3 (the agent
is standard library only), because the test venv's interpreter lives under /root where
`nobody` cannot read."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from cmdop_server.machines.models import Machine

from tests.server_sessions.real_agent import new_join_token
from tests.support.control_plane import until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(databases=["default", "audit"], transaction=True),
    pytest.mark.skipif(not (shutil.which("setpriv") and Path("/usr/bin/python3").exists()),
                       reason="needs setpriv and a system python3"),
]

NOBODY = 65534
AGENT_SRC = Path(__file__).resolve().parents[2] / "agent" / "src"


@pytest.fixture(scope="module")
def agent_src() -> Path:
    """A world-readable copy of the agent's source: the checkout may sit in a folder that
    `nobody` cannot enter (a CI clone in a 0700 mktemp dir), as a real install would not."""
    root = Path(tempfile.mkdtemp(prefix="cmdop-agent-src-", dir="/var/tmp"))
    shutil.copytree(AGENT_SRC / "cmdop_agent", root / "cmdop_agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield root
    shutil.rmtree(root)


@pytest.fixture
def nobody_home(control_plane, agent_src):
    root = Path(tempfile.mkdtemp(prefix="cmdop-nobody-", dir="/var/tmp"))
    conf = root / ".config" / "cmdop-agent"
    conf.mkdir(parents=True)
    shutil.copy(control_plane.pki.ca, conf / "site-ca.pem")
    (conf / "agent.toml").write_text(f'server = "{control_plane.url}"\n'
                                     'ca_file = "site-ca.pem"\n')
    (conf / "agent.toml").chmod(0o600)
    for path in [root, *root.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    root.chmod(0o700)
    (root / ".agent-src").symlink_to(agent_src)
    yield root
    shutil.rmtree(root)


def as_nobody(root: Path, *args: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "env", "-i",
            f"HOME={root}", f"PYTHONPATH={(root / '.agent-src').resolve()}", "SHELL=/bin/sh",
            "PATH=/usr/bin:/bin", "/usr/bin/python3", "-m", "cmdop_agent.cli", *args]


def test_enroll_and_work_as_an_ordinary_user(nobody_home: Path, control_plane,
                                             real_agent) -> None:
    fleet = real_agent(control_plane)  # the workspace and its operator; the agent is ours
    token = new_join_token(fleet.ws, fleet.owner)
    enroll = subprocess.run(as_nobody(nobody_home, "enroll", "--token", token),
                            capture_output=True, text=True, timeout=60)
    assert enroll.returncode == 0, enroll.stderr
    cred = nobody_home / ".config" / "cmdop-agent" / "credential.json"
    assert cred.stat().st_uid == NOBODY and cred.stat().st_mode & 0o777 == 0o600
    proc = subprocess.Popen(as_nobody(nobody_home, "run"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        fleet.machine = until(lambda: Machine.objects.in_workspace(fleet.ws)
                              .filter(last_seen_at__isnull=False).first(),
                              what="the first heartbeat")
        sid, out = fleet.open_session()
        work_id = fleet.api.command(sid, "id -u; grep NoNewPrivs /proc/self/status")
        result = out.wait_record("command.result", work_id=work_id)
        assert base64.b64decode(result["stdout_b64"]).decode().split() == \
            [str(NOBODY), "NoNewPrivs:", "1"]
        denied = fleet.api.read_file(sid, "/root/.bashrc")
        assert out.wait_record("work.error", work_id=denied)["error"] == "file_error"
        fleet.api.type(sid, b"id -u\n")
        out.wait_for(f"\n{NOBODY}".encode())  # the PTY's shell too
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        proc.stderr.close()


def test_ordinary_user_refuses_a_config_owned_by_root(nobody_home: Path) -> None:
    config = nobody_home / ".config" / "cmdop-agent" / "agent.toml"
    os.chown(config, 0, 0)
    result = subprocess.run(as_nobody(nobody_home, "enroll", "--token", "jt_unused"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert result.stderr.strip().endswith(f"owned by uid 0, the agent runs as uid {NOBODY}")
