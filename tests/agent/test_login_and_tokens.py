"""Device-flow login (RFC 8628), the sealed refresh token, refresh 5 minutes before expiry."""

from __future__ import annotations

import json
import signal

import pytest
from cmdop_agent.api import REFRESH_MARGIN, Auth, login_with_device_flow
from cmdop_agent.config import load_config

pytestmark = pytest.mark.integration


@pytest.fixture
def config(home, monkeypatch):
    for key, value in home.env().items():
        if key in ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
            monkeypatch.setenv(key, value)
    return load_config(home.config)


def test_device_flow_honours_interval_and_slow_down(config, standin) -> None:
    shown, sleeps = [], []
    standin.state.device_pending = 2
    cred = login_with_device_flow(config, show=shown.append, sleep=sleeps.append)
    assert "WDJB-MJHT" in shown[0] and "/device" in shown[0]
    # interval 0.05, then slow_down adds 5 s for every later poll (RFC 8628 §3.5)
    assert sleeps == [0.05, 5.05, 5.05, 5.05]
    stored = json.loads(config.credential_file.read_text())
    assert stored["kind"] == "oauth" and cred["machine_id"] == "m_oauth"
    assert "rt_secret" not in config.credential_file.read_text()
    assert config.credential_file.stat().st_mode & 0o777 == 0o600


def test_access_token_refreshed_five_minutes_before_expiry(config, standin) -> None:
    login_with_device_flow(config, show=lambda _: None, sleep=lambda _: None)
    now = [0.0]
    auth = Auth(config, clock=lambda: now[0])
    expires = auth.cred["access_expires_at"]
    first = auth.cred["access_token"]
    now[0] = expires - REFRESH_MARGIN - 1
    assert auth.token() == first and standin.state.refreshes == 0
    now[0] = expires - REFRESH_MARGIN + 1
    second = auth.token()
    assert second != first and standin.state.refreshes == 1
    assert "rt_secret" not in config.credential_file.read_text()


def test_cli_login_then_run_with_refreshing_tokens(home, standin) -> None:
    standin.state.device_slow_down = False
    standin.state.device_pending = 1
    standin.state.access_ttl = REFRESH_MARGIN + 2  # every token is due for refresh in 2 s
    result = home.cli("login")
    assert result.returncode == 0, result.stderr
    assert "enter the code WDJB-MJHT" in result.stdout
    proc = home.start()
    try:
        w = standin.push("command.run", command="echo via-oauth")
        standin.event("command.result", work_id=w)
        standin.wait_for(lambda _: standin.state.refreshes >= 2, timeout=15)
        w = standin.push("command.run", command="echo still-authorised")
        standin.event("command.result", work_id=w)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_cli_login_names_the_workspace(home, standin) -> None:
    standin.state.device_slow_down = False
    standin.state.device_pending = 0
    standin.state.require_workspace = "acme"
    refused = home.cli("login")
    assert refused.returncode != 0 and "several workspaces" in refused.stderr
    assert not home.credential.exists()
    assert home.cli("login", "--workspace", "acme").returncode == 0
