"""RFC 8628 pacing: the agent honours the server's interval and every slow_down. The real
control plane answers slow_down only to polls that come too soon in real time (it would
take its 5 s intervals to script), so the TEST-ONLY stand-in scripts the replies here. The
device flow, the sealed refresh token and refreshing against the real control plane:
tests/server_sessions/test_real_agent_enroll.py."""

from __future__ import annotations

import json

import pytest
from cmdop_agent.api import login_with_device_flow
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
