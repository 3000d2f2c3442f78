"""``cmdop`` (the person's client) against the real control plane and a real agent: device
flow login approved on the verification page, tokens on disk, refresh 5 minutes early, refresh
reuse, logout, API keys, file-mode and TLS refusals, machines and exec."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time

import pytest
from cmdop_agent.oauth import REFRESH_MARGIN
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity.models import AccessToken

from tests.server_sessions.cmdop_user import CmdopUser, one_line_failure
from tests.support.control_plane import ControlPlane, make_pki

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


@pytest.fixture(scope="module")
def quick_control_plane(tls_pki, django_db_setup, django_db_modify_db_settings,
                        tmp_path_factory):
    """Device-flow polls every second; each access token is due for refresh (5 minutes
    before it expires) two seconds after it is issued."""
    env = {"CMDOP_TEST_ACCESS_TOKEN_TTL": str(REFRESH_MARGIN + 2),
           "CMDOP_TEST_DEVICE_POLL_INTERVAL": "1"}
    log = tmp_path_factory.mktemp("cmdop-quick") / "gunicorn.log"
    with ControlPlane(tls_pki, log, env=env) as cp:
        yield cp


@pytest.fixture
def agent(quick_control_plane, real_agent):
    agent = real_agent(quick_control_plane)
    agent.start()
    return agent


@pytest.fixture
def person(agent, quick_control_plane, tmp_path):
    return CmdopUser(tmp_path / "person", quick_control_plane.url, quick_control_plane.pki.ca)


def refreshes(success: bool = True) -> int:
    return AuditEvent.objects.filter(event="auth.token.refresh", success=success).count()


def test_login_by_device_flow_then_machines(agent, person) -> None:
    login = person.login(agent.owner)
    assert login.returncode == 0, login.stderr
    assert "/device/" in login.stdout and f"workspace {agent.ws.slug}" in login.stdout
    stored = person.dot / "login.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert (person.dot / "keys").stat().st_mode & 0o077 == 0
    text = stored.read_text()
    assert "cmd_rt_" not in text  # the refresh token is sealed, only the access token is clear
    assert json.loads(text)["refresh_token_sealed"].startswith("v1.")
    listed = person.run("machines", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["machine_id"] for r in rows] == [agent.machine.public_id]
    table = person.run("machines")
    assert agent.machine.hostname in table.stdout.decode() and b"online" in table.stdout


def test_access_token_refreshed_five_minutes_early_and_reuse_detected(agent, person) -> None:
    assert person.login(agent.owner).returncode == 0
    stored = person.dot / "login.json"
    before = json.loads(stored.read_text())
    shutil.copy(stored, person.home / "old-login.json")
    time.sleep(2.5)  # the token now has less than 5 minutes (+2 s) left: due for refresh
    assert person.run("machines").returncode == 0
    after = json.loads(stored.read_text())
    assert after["access_token"] != before["access_token"] and refreshes() == 1
    # the old login file again: its refresh token was used; presenting it is theft
    shutil.copy(person.home / "old-login.json", stored)
    stored.chmod(0o600)
    one_line_failure(person.run("machines"), "login expired or was revoked", "cmdop login")
    assert AuditEvent.objects.filter(event="auth.token.refresh", success=False,
                                     reason="reuse").exists()
    # the whole family is revoked: the newer login is dead too
    stored.write_text(json.dumps(after))
    stored.chmod(0o600)
    one_line_failure(person.run("machines"), "cmdop login")


def test_logout_revokes_on_the_server(agent, person) -> None:
    assert person.login(agent.owner).returncode == 0
    access = json.loads((person.dot / "login.json").read_text())["access_token"]
    out = person.run("logout")
    assert out.returncode == 0, out.stderr
    assert not (person.dot / "login.json").exists()
    from cmdop_server import credentials

    row = AccessToken.objects.select_related("family").get(
        token_hash=credentials.sha256_hex(access))
    assert row.family.revoked_at is not None
    one_line_failure(person.run("machines"), "no server")


def test_exec_exit_codes_and_output(agent, person) -> None:
    person.api_key = agent.key
    config = person.dot / "config.yaml"
    person.dot.mkdir(mode=0o700, parents=True)
    config.write_text(f"server: {person.server}\nca: {person.ca}  # the site's CA\n")
    config.chmod(0o600)
    host = agent.machine.hostname
    ok = person.run("exec", host, "--", "echo", "hello;", "echo", "err", ">&2")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == b"hello\n" and ok.stderr == b"err\n"
    assert person.run("exec", host, "--", "false").returncode == 1
    missing = person.run("exec", agent.machine.public_id, "--", "no-such-command-here")
    assert missing.returncode == 127 and b"not found" in missing.stderr
    one_line_failure(person.run("exec", "nonesuch", "--", "true"), "no machine 'nonesuch'")


def test_exec_streams_output_while_the_command_runs(agent, person, tmp_path) -> None:
    """The command prints a line, then waits for a file this test makes only once it has
    read that line from cmdop's stdout: only streamed output can get it there. Then the
    rest comes, and the command's exit code is cmdop's."""
    person.api_key = agent.key
    release = tmp_path / "release"
    script = (f"echo first-$((1+1)); while [ ! -e {release} ]; do sleep 0.1; done; "
              "echo second-$((2+2)) >&2; exit 7")
    proc = subprocess.Popen(person.argv("exec", "--server", person.server, "--ca",
                                        str(person.ca), agent.machine.hostname, "--", script),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=person.env())
    assert proc.stdout is not None
    seen = bytearray()
    try:
        deadline = time.monotonic() + 60
        while b"first-2\n" not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([proc.stdout], [], [], left)[0], (
                f"no streamed first line; got {bytes(seen)!r}")
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"cmdop ended before the command: {proc.stderr.read()!r}"
            seen += chunk
        assert proc.poll() is None  # the command is still waiting for us
    finally:
        release.touch()  # the command ends whatever happened (the agent's group outlives us)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert bytes(seen) + out == b"first-2\n" and err == b"second-4\n"


def test_files_readable_by_others_are_refused(agent, person) -> None:
    assert person.login(agent.owner).returncode == 0
    stored = person.dot / "login.json"
    stored.chmod(0o644)
    one_line_failure(person.run("machines"), "chmod 600", str(stored))
    stored.chmod(0o600)
    config = person.dot / "config.yaml"
    config.write_text("workspace: nope\n")
    config.chmod(0o640)
    one_line_failure(person.run("machines"), "chmod 600", str(config))
    config.chmod(0o600)
    config.write_text("password: hunter2\n")
    one_line_failure(person.run("machines"), f"{config}:1")


def test_api_key_refused_and_unreachable_server(agent, person) -> None:
    person.api_key = agent.key[:-4] + "AAAA"
    line = one_line_failure(person.run("machines", "--server", person.server,
                                       "--ca", str(person.ca)))
    assert "API key was refused" in line or "rate limited" in line
    person.api_key = agent.key
    one_line_failure(person.run("machines", "--server", "https://127.0.0.1:9", "--ca",
                                str(person.ca)), "cannot reach 127.0.0.1:9")


def test_certificate_from_another_ca_is_refused(agent, person, tmp_path) -> None:
    other = make_pki(tmp_path / "other-ca")
    person.api_key = agent.key
    one_line_failure(person.run("machines", "--server", person.server, "--ca", str(other.ca)),
                     "TLS: certificate", "not trusted")
