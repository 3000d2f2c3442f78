"""Refusals before any control-plane logic: TLS the agent will not accept (a server the
real control plane is never configured to be: TLS 1.2 only, a certificate from another CA
or for another host: the TEST-ONLY stand-in plays it), and configs it will not use (no
server is reached at all). Each a clear one-line error, a non-zero exit, nothing written.
Refusals that the control plane decides (join tokens, revoked credentials) are tested
against the real one: tests/server_sessions/test_real_agent_enroll.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from agent_home import AgentHome, assert_one_line_failure, write_config
from agent_standin import StandIn, make_leaf

pytestmark = pytest.mark.integration


@pytest.fixture
def offline_home(tmp_path, pki) -> AgentHome:
    """A home whose config names a server that is never reached (nothing listens there)."""
    config = write_config(tmp_path, "https://localhost:9", pki.ca)
    return AgentHome(tmp_path, config, config.parent / "credential.json")


def test_wrong_ca(home: AgentHome, standin, pki) -> None:
    write_config(home.root, standin.url, pki.wrong_ca)
    result = home.cli("enroll", "--token", "jt_good")
    assert_one_line_failure(result, "not trusted", str(pki.wrong_ca))
    assert not home.credential.exists()


def test_certificate_for_another_host(home: AgentHome, pki, tmp_path) -> None:
    cert, key = make_leaf(tmp_path, pki.ca_key, pki.ca_cert, host="elsewhere.example")
    server = StandIn(cert, key)
    try:
        write_config(home.root, server.url, pki.ca)  # connects to localhost
        result = home.cli("enroll", "--token", "jt_good")
        assert_one_line_failure(result, "not trusted", "Hostname mismatch")
    finally:
        server.close()
    assert not home.credential.exists()


def test_server_offering_only_tls12(home: AgentHome, standin_tls12, pki) -> None:
    write_config(home.root, standin_tls12.url, pki.ca)
    result = home.cli("enroll", "--token", "jt_good")
    assert_one_line_failure(result, "TLS 1.3")
    assert not home.credential.exists()
    assert not standin_tls12.state.credentials  # no request got through


def test_group_readable_config_refused(offline_home: AgentHome) -> None:
    offline_home.config.chmod(0o640)
    assert_one_line_failure(offline_home.cli("enroll", "--token", "jt_x"), "mode 0640")
    assert not offline_home.credential.exists()


def test_config_owned_by_someone_else_refused(offline_home: AgentHome) -> None:
    os.chown(offline_home.config, 65534, 65534)
    assert_one_line_failure(offline_home.cli("enroll", "--token", "jt_x"),
                            "owned by uid 65534")
    assert not offline_home.credential.exists()


def test_plain_http_server_refused(offline_home: AgentHome, pki) -> None:
    write_config(offline_home.root, "http://localhost:9", pki.ca)
    assert_one_line_failure(offline_home.cli("enroll", "--token", "jt_x"), "https://")


def test_refuses_root_without_opt_in(offline_home: AgentHome) -> None:
    assert os.geteuid() == 0, "the test suite runs as root here"
    result = subprocess.run(
        [sys.executable, "-m", "cmdop_agent.cli", "--config", str(offline_home.config),
         "enroll", "--token", "jt_x"],
        capture_output=True, text=True, env=offline_home.env(), timeout=30)
    assert_one_line_failure(result, "refusing to run as root", "--allow-root")
    assert not offline_home.credential.exists()
