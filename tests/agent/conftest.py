"""Fixtures for the agent tests: a throwaway PKI, the test-only stand-in control plane
(agent_standin.py: only for what the real control plane cannot be made to do), an agent
home with a 0600 config, and the agent as a real process. Tests against the real control
plane live in tests/server_sessions/test_real_agent*.py (they need its databases)."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent_home import AgentHome, write_config
from agent_standin import StandIn, make_ca, make_leaf


@dataclass
class Pki:
    ca: Path
    wrong_ca: Path
    cert: Path
    key: Path
    ca_key: object
    ca_cert: object


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_cert = make_ca(d, "site-ca")
    wrong, _, _ = make_ca(d, "other-ca")
    cert, key = make_leaf(d, ca_key, ca_cert)
    return Pki(ca, wrong, cert, key, ca_key, ca_cert)


@pytest.fixture
def standin(pki: Pki):
    server = StandIn(pki.cert, pki.key)
    server.state.join_tokens.add("jt_good")
    yield server
    server.close()


@pytest.fixture
def standin_tls12(pki: Pki):
    server = StandIn(pki.cert, pki.key, tls_max=ssl.TLSVersion.TLSv1_2)
    server.state.join_tokens.add("jt_good")
    yield server
    server.close()


@pytest.fixture
def home(tmp_path: Path, standin: StandIn, pki: Pki) -> AgentHome:
    config = write_config(tmp_path, standin.url, pki.ca)
    return AgentHome(tmp_path, config, config.parent / "credential.json")


@pytest.fixture
def running_agent(home: AgentHome, standin: StandIn):
    """An enrolled agent process, stopped with SIGTERM afterwards."""
    result = home.cli("enroll", "--token", "jt_good")
    assert result.returncode == 0, result.stderr
    proc = home.start()
    standin_wait_heartbeat(standin)
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def standin_wait_heartbeat(standin: StandIn, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not standin.state.heartbeats:
        if time.monotonic() > deadline:
            raise AssertionError("the agent sent no heartbeat")
        time.sleep(0.02)
