"""Enrollment and login of the real cmdop-agent with the real control plane: join tokens
(good, expired, unknown, used up), the credential on disk, a revoked credential, the device
flow (RFC 8628) and refresh tokens. Each refusal is one clear line, a non-zero exit, and
nothing written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from cmdop_agent.api import REFRESH_MARGIN, Auth, login_with_device_flow
from cmdop_agent.config import load_config
from cmdop_agent.vault import Vault
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions as identity_actions
from cmdop_server.machines.models import JoinToken, Machine
from django.utils import timezone

from tests.server_sessions.helpers import make_workspace
from tests.server_sessions.real_agent import new_join_token
from tests.support.control_plane import ControlPlane

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "agent"))
from agent_home import assert_one_line_failure  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


@pytest.fixture
def agent(control_plane, real_agent):
    return real_agent(control_plane)


def no_temp_files(directory) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_enroll_writes_a_private_credential(agent) -> None:
    token = new_join_token(agent.ws, agent.owner)
    result = agent.home.cli("enroll", "--token", "-", stdin=token + "\n")
    assert result.returncode == 0, result.stderr
    assert os.stat(agent.home.credential).st_mode & 0o777 == 0o600
    cred = json.loads(agent.home.credential.read_text())
    machine = Machine.objects.in_workspace(agent.ws).get()
    assert cred["kind"] == "machine" and cred["machine_id"] == machine.public_id
    assert cred["workspace"] == agent.ws.slug
    assert no_temp_files(agent.home.credential.parent)
    assert token not in agent.home.credential.read_text()


def test_expired_join_token(agent) -> None:
    token = new_join_token(agent.ws, agent.owner)
    JoinToken.objects.in_workspace(agent.ws).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert_one_line_failure(agent.enroll(token), "join_token_expired")
    assert not agent.home.credential.exists()


def test_unknown_join_token(agent) -> None:
    assert_one_line_failure(agent.enroll("jt_not-a-token-anyone-made"), "join_token_invalid")
    assert not agent.home.credential.exists()


def test_used_up_join_token(control_plane, real_agent) -> None:
    first = real_agent(control_plane)
    token = new_join_token(first.ws, first.owner, usage_limit=1)
    assert first.enroll(token).returncode == 0
    second = real_agent(control_plane)
    assert_one_line_failure(second.enroll(token), "join_token_exhausted")
    assert not second.home.credential.exists()


def test_unsafe_credential_directory_refused_before_the_token_is_spent(agent) -> None:
    token = new_join_token(agent.ws, agent.owner)
    agent.home.config.parent.chmod(0o777)
    assert_one_line_failure(agent.enroll(token), "directory")
    assert not agent.home.credential.exists()
    assert JoinToken.objects.in_workspace(agent.ws).get().uses == 0  # never sent
    agent.home.config.parent.chmod(0o700)
    assert agent.enroll(token).returncode == 0  # the token still works


def test_world_readable_credential_refused(agent) -> None:
    assert agent.enroll().returncode == 0
    agent.home.credential.chmod(0o644)
    before = agent.home.credential.read_bytes()
    run = subprocess.run(
        [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config",
         str(agent.home.config), "run"],
        capture_output=True, text=True, env=agent.home.env(), timeout=30)
    assert_one_line_failure(run, "mode 0644", str(agent.home.credential))
    assert agent.home.credential.read_bytes() == before


def test_revoked_credential_stops_the_agent(agent) -> None:
    """The owner rotates the machine's credential (user API): the old one is refused and
    the agent stops with a one-line error instead of retrying forever."""
    assert agent.enroll().returncode == 0
    machine = Machine.objects.in_workspace(agent.ws).get()
    agent.api.call("POST", f"/machines/{machine.public_id}/credential")
    run = subprocess.run(
        [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config",
         str(agent.home.config), "run"],
        capture_output=True, text=True, env=agent.home.env(), timeout=60)
    assert_one_line_failure(run, "enroll again")


# ---- the device flow and refresh tokens ----------------------------------------------------


@pytest.fixture
def agent_env(agent, monkeypatch):
    """This process as the agent's user (HOME, XDG_*): for the agent's own functions."""
    for key, value in agent.home.env().items():
        if key in ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
            monkeypatch.setenv(key, value)
    return agent


def _approving(agent, shown: list[str]):
    """A ``sleep`` for login_with_device_flow: the owner approves the code it printed."""
    def sleep(_seconds: float) -> None:
        code = re.search(r"enter the code (\S+)", shown[0]).group(1)
        assert identity_actions.do_decide_device(agent.owner, code, True, None)
    return sleep


def test_device_flow_login_enrolls_and_seals_the_refresh_token(agent_env) -> None:
    agent = agent_env
    config = load_config(agent.home.config)
    shown: list[str] = []
    cred = login_with_device_flow(config, show=shown.append, sleep=_approving(agent, shown))
    assert "/device" in shown[0]
    machine = Machine.objects.in_workspace(agent.ws).get()
    assert cred["kind"] == "oauth" and cred["machine_id"] == machine.public_id
    stored = agent.home.credential.read_text()
    refresh = Vault(config.key_dir).open(json.loads(stored)["refresh_token_sealed"])
    assert refresh and refresh not in stored
    assert agent.home.credential.stat().st_mode & 0o777 == 0o600


def test_access_token_refreshed_five_minutes_before_expiry(agent_env) -> None:
    agent = agent_env
    config = load_config(agent.home.config)
    shown: list[str] = []
    login_with_device_flow(config, show=shown.append, sleep=_approving(agent, shown))
    now = [0.0]
    auth = Auth(config, clock=lambda: now[0])
    expires, first = auth.cred["access_expires_at"], auth.cred["access_token"]

    def refreshes() -> int:
        return AuditEvent.objects.filter(event="auth.token.refresh", success=True).count()

    now[0] = expires - REFRESH_MARGIN - 1
    assert auth.token() == first and refreshes() == 0
    now[0] = expires - REFRESH_MARGIN + 1
    second = auth.token()
    assert second != first and refreshes() == 1
    refresh = Vault(config.key_dir).open(auth.cred["refresh_token_sealed"])
    assert refresh not in agent.home.credential.read_text()


@pytest.fixture(scope="module")
def quick_auth_control_plane(tls_pki, django_db_setup, django_db_modify_db_settings,
                             tmp_path_factory):
    """A control plane that asks for device-flow polls every second (not 5) and issues
    access tokens that are due for refresh one second after they are issued."""
    env = {"CMDOP_TEST_ACCESS_TOKEN_TTL": str(REFRESH_MARGIN + 1),
           "CMDOP_TEST_DEVICE_POLL_INTERVAL": "1"}
    log = tmp_path_factory.mktemp("quick-auth") / "gunicorn.log"
    with ControlPlane(tls_pki, log, env=env) as cp:
        yield cp


def _cli_login(agent, *extra: str) -> subprocess.CompletedProcess:
    """``cmdop-agent login``: read the code it prints, approve it as the owner."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config",
         str(agent.home.config), "login", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=agent.home.env())
    first = proc.stdout.readline()
    code = re.search(r"enter the code (\S+)", first)
    assert code, first + proc.stderr.read()
    assert identity_actions.do_decide_device(agent.owner, code.group(1), True, None)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err)


def test_cli_login_names_the_workspace(quick_auth_control_plane, real_agent) -> None:
    """An owner of two workspaces must say which one the machine joins."""
    agent = real_agent(quick_auth_control_plane)
    make_workspace(owner=agent.owner)
    login = _cli_login(agent)
    assert login.returncode != 0 and "Name the workspace" in login.stderr
    assert not agent.home.credential.exists()
    login = _cli_login(agent, "--workspace", agent.ws.slug)
    assert login.returncode == 0, login.stderr
    assert Machine.objects.in_workspace(agent.ws).count() == 1


def test_cli_login_then_run_with_refreshing_tokens(quick_auth_control_plane,
                                                   real_agent) -> None:
    """The running agent refreshes its access token whenever it is due (here: a second
    after each refresh; every refresh rotates the refresh token) and stays authorised."""
    agent = real_agent(quick_auth_control_plane)
    login = _cli_login(agent)
    assert login.returncode == 0, login.stderr
    assert "/device" in login.stdout
    agent.start()
    sid, out = agent.open_session()

    def refreshes() -> int:
        return AuditEvent.objects.filter(event="auth.token.refresh", success=True).count()

    # each line typed ends the agent's parked poll; its next request finds the token due
    deadline, typed = time.monotonic() + 30, 0
    while refreshes() < 2:
        assert time.monotonic() < deadline, f"refreshed {refreshes()}x\n{agent.log_text()}"
        agent.api.type(sid, f"echo typed-{typed}\n".encode())
        out.wait_for(f"typed-{typed}".encode(), start=len(out.data))
        typed += 1
    work_id = agent.api.command(sid, "echo still-authorised")
    assert out.wait_record("command.result", work_id=work_id)["exit_code"] == 0
    assert not AuditEvent.objects.filter(event="auth.token.refresh", success=False)
    assert agent.stop() == 0, agent.log_text()
