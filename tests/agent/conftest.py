"""Fixtures for the agent tests: a throwaway PKI, the test-only stand-in control plane
(agent_standin.py), an agent home with a 0600 config, and the agent as a real process."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
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
    server.state.join_tokens["jt_good"] = time.time() + 600
    server.state.join_tokens["jt_expired"] = time.time() - 1
    yield server
    server.close()


@pytest.fixture
def standin_tls12(pki: Pki):
    server = StandIn(pki.cert, pki.key, tls_max=ssl.TLSVersion.TLSv1_2)
    server.state.join_tokens["jt_good"] = time.time() + 600
    yield server
    server.close()


@dataclass
class AgentHome:
    root: Path
    config: Path
    credential: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(HOME=str(self.root), XDG_CONFIG_HOME=str(self.root / ".config"),
                   XDG_STATE_HOME=str(self.root / ".state"),
                   XDG_DATA_HOME=str(self.root / ".share"), SHELL="/bin/bash",
                   PYTHONUNBUFFERED="1")
        return env

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 30
            ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config",
             str(self.config), *args],
            input=stdin, capture_output=True, text=True, env=self.env(), timeout=timeout)

    def start(self, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config",
             str(self.config), *extra, "run", "-v"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env())


def write_config(root: Path, server: str, ca: Path | str, extra: str = "") -> Path:
    conf_dir = root / ".config" / "cmdop-agent"
    conf_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = conf_dir / "agent.toml"
    config.write_text(f'server = "{server}"\nca_file = "{ca}"\n{extra}')
    config.chmod(0o600)
    return config


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


def standin_wait_heartbeat(standin: StandIn, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not standin.state.heartbeats:
        if time.monotonic() > deadline:
            raise AssertionError("the agent sent no heartbeat")
        time.sleep(0.02)
