"""The real cmdop-agent against the real control plane: gunicorn's asgi worker over TLS
(certificates from a throwaway CA), enrollment with a join token, heartbeat, a session
opened through the user API, input typed, output read back through the cursor API, a
command run and its result audited, the session closed."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions as identity_actions
from cmdop_server.machines import actions as machine_actions
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Session, Status

from tests.server_sessions.helpers import make_workspace, owner_membership
from tests.support.services import free_port, wait_for_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_home import AgentHome, write_config  # noqa: E402

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


def _pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for localhost: (ca.pem, leaf.crt, leaf.key)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test-ca")).issuer_name(name("test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "leaf.crt", directory / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@pytest.fixture
def tls_control_plane(tmp_path):
    ca, cert, key = _pki(tmp_path)
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.test"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "cmdop_server.asgi:application",
         "-k", "asgi", "-w", "1", "-b", f"127.0.0.1:{port}", "--certfile", str(cert),
         "--keyfile", str(key), "--log-level", "warning"],
        env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, proc, timeout=30)
        yield f"https://localhost:{port}", ca
    finally:
        proc.terminate()
        proc.wait(15)


def _api(method: str, url: str, key: str, body: dict | None = None) -> dict:
    import json
    import ssl
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(_CA[0]))
    req = urllib.request.Request(url, method=method,  # noqa: S310 - test server
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=40) as resp:  # noqa: S310
        return json.loads(resp.read())


_CA: list = []


def _until(predicate, timeout: float = 20.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_real_agent_end_to_end(tmp_path, tls_control_plane):
    server, ca = tls_control_plane
    _CA[:] = [ca]
    ws, owner = make_workspace()
    _, join_token = machine_actions.do_create_join_token(owner_membership(ws, owner), "e2e", 600)
    key = identity_actions.do_create_api_key(owner_membership(ws, owner), "e2e")[1]
    home = AgentHome(tmp_path / "agent", write_config(tmp_path / "agent", server, ca),
                     tmp_path / "agent" / ".config" / "cmdop-agent" / "credential.json")
    enrolled = home.cli("enroll", "--token", join_token)
    assert enrolled.returncode == 0, enrolled.stderr
    agent = home.start()
    try:
        machine = _until(lambda: Machine.objects.in_workspace(ws).filter(
            last_seen_at__isnull=False).first(), what="the first heartbeat")
        base = f"{server}/api/v1/workspaces/{ws.slug}"
        sid = _api("POST", f"{base}/sessions", key, {"machine_id": machine.public_id}
                   )["session_id"]
        _until(lambda: Session.objects.in_workspace(ws).get(public_id=sid).status
               == Status.CONNECTED, what="the PTY to open")
        _api("POST", f"{base}/sessions/{sid}/input", key,
             {"data_b64": base64.b64encode(b"echo hello-$((6*7))\n").decode()})
        seen, cursor = b"", ""

        def output_has_answer():
            nonlocal seen, cursor
            page = _api("GET", f"{base}/sessions/{sid}/output?wait=5"
                        + (f"&cursor={cursor}" if cursor else ""), key)
            cursor = page["cursor"]
            for item in page["items"]:
                if item["type"] == "output":
                    seen += base64.b64decode(item["data_b64"])
            return b"hello-42" in seen

        _until(output_has_answer, timeout=30, what="the echo in the output")
        _api("POST", f"{base}/sessions/{sid}/commands", key, {"command": "echo via-command"})
        ran = _until(lambda: AuditEvent.objects.filter(event="command.executed").first(),
                     what="the command result")
        assert ran.data["command"] == "echo via-command" and ran.data["exit_code"] == 0
        closed = _api("POST", f"{base}/sessions/{sid}/close", key, {})
        assert closed["status"] == "closed"
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
        out, err = agent.communicate()
    assert agent.returncode == 0, err.decode()[-2000:]
