"""Bad input: each a clear one-line error, a non-zero exit, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from agent_home import AgentHome, write_config
from agent_standin import StandIn, make_leaf

pytestmark = pytest.mark.integration


def assert_one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no traceback
    assert lines[0].startswith("cmdop-agent: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_enroll_writes_a_private_credential(home: AgentHome) -> None:
    result = home.cli("enroll", "--token", "-", stdin="jt_good\n")
    assert result.returncode == 0, result.stderr
    assert os.stat(home.credential).st_mode & 0o777 == 0o600
    assert "mc_" in home.credential.read_text()
    assert not [p for p in home.credential.parent.iterdir() if p.name.endswith(".tmp")]


def test_expired_join_token(home: AgentHome) -> None:
    result = home.cli("enroll", "--token", "jt_expired")
    assert_one_line_failure(result, "join_token_expired")
    assert not home.credential.exists()


def test_unknown_join_token(home: AgentHome) -> None:
    assert_one_line_failure(home.cli("enroll", "--token", "nope"), "join_token_invalid")
    assert not home.credential.exists()


def test_wrong_ca(home: AgentHome, standin, pki) -> None:
    write_config(home.root, standin.url, pki.wrong_ca)
    result = home.cli("enroll", "--token", "jt_good")
    assert_one_line_failure(result, "not trusted", str(pki.wrong_ca))
    assert not home.credential.exists()


def test_certificate_for_another_host(home: AgentHome, pki, tmp_path) -> None:
    ca_key, ca_cert = pki.ca_key, pki.ca_cert
    cert, key = make_leaf(tmp_path, ca_key, ca_cert, host="elsewhere.example")
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


def test_world_readable_credential_refused(home: AgentHome) -> None:
    assert home.cli("enroll", "--token", "jt_good").returncode == 0
    home.credential.chmod(0o644)
    before = home.credential.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config", str(home.config),
         "run"], capture_output=True, text=True, env=home.env(), timeout=30)
    assert_one_line_failure(proc, "mode 0644", str(home.credential))
    assert home.credential.read_bytes() == before


def test_group_readable_config_refused(home: AgentHome) -> None:
    home.config.chmod(0o640)
    assert_one_line_failure(home.cli("enroll", "--token", "jt_good"), "mode 0640")
    assert not home.credential.exists()


def test_config_owned_by_someone_else_refused(home: AgentHome) -> None:
    os.chown(home.config, 65534, 65534)
    assert_one_line_failure(home.cli("enroll", "--token", "jt_good"), "owned by uid 65534")
    assert not home.credential.exists()


def test_plain_http_server_refused(home: AgentHome, standin, pki) -> None:
    write_config(home.root, standin.url.replace("https", "http"), pki.ca)
    assert_one_line_failure(home.cli("enroll", "--token", "jt_good"), "https://")


def test_refuses_root_without_opt_in(home: AgentHome) -> None:
    assert os.geteuid() == 0, "the test suite runs as root here"
    result = subprocess.run(
        [sys.executable, "-m", "cmdop_agent.cli", "--config", str(home.config), "enroll",
         "--token", "jt_good"], capture_output=True, text=True, env=home.env(), timeout=30)
    assert_one_line_failure(result, "refusing to run as root", "--allow-root")
    assert not home.credential.exists()


def test_revoked_credential_stops_the_agent(home: AgentHome, standin) -> None:
    assert home.cli("enroll", "--token", "jt_good").returncode == 0
    standin.state.credentials.clear()
    result = subprocess.run(
        [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config", str(home.config),
         "run"], capture_output=True, text=True, env=home.env(), timeout=30)
    assert_one_line_failure(result, "enroll again")


def test_unsafe_credential_directory_refused_before_the_token_is_spent(home: AgentHome,
                                                                     standin) -> None:
    home.config.parent.chmod(0o777)
    assert_one_line_failure(home.cli("enroll", "--token", "jt_good"), "directory")
    assert not home.credential.exists()
    assert not standin.state.credentials  # the server was never asked
    home.config.parent.chmod(0o700)
    assert home.cli("enroll", "--token", "jt_good").returncode == 0  # the token still works
