"""`cmdop-install rotate SITE pki_ca`, then `pki_leaves`, each with `--finish`, on the
deployed lab site under load.

The load (tests/support/site_load.py: sign-ins, a browser session, OAuth refreshes, API-key
calls, an agent session echoing input) runs through nginx all along, trusting what the
site's ``pki/ca-bundle.crt`` says at each request, as an operator's client given that file
would; the lab agents long-poll. The CA rotation must fail none of it and restart no agent.
After --finish every host's bundle is the new CA alone: Redis refuses a client
certificate signed by the old CA at the handshake (mutual TLS), an agent host's bundle
fails the old CA's nginx certificate, and an agent session still runs a command. A leaf
rotation then gives nginx, Postgres and Redis new keys and certificates, each taken by a
reload (Redis keeps its process), with the same load failing nothing.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cmdop_install import pki
from cmdop_install.lab import core
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.secrets import SecretStore
from cmdop_install.site import load_site
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import cli, fleet, lab_ssh, manage, redis_started
from tests.support.site_load import BundleEndpoint, SiteLoad

# the host1 leaves a leaf rotation gives new keys; agents hold only the CA
LEAVES = ("nginx-host1", "postgres-host1", "redis-host1", "app-host1")

pytestmark = pytest.mark.lab


def _redis_answer(lab, site, cert: Path, key: Path) -> bytes | None:
    """What Redis on host1 answers PING over mutual TLS with this client certificate
    (-NOAUTH: the handshake passed), or None when the handshake is refused. The server's
    certificate is checked against the site's bundle."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # dialled by address; the chain is still verified
    ctx.load_verify_locations(cafile=str(site.dir / "pki" / pki.BUNDLE))
    ctx.load_cert_chain(str(cert), str(key))
    port = load_site(site.dir)["redis"]["port"]
    try:
        with socket.create_connection((lab.host("host1").ip, port), timeout=20) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.sendall(b"PING\r\n")
            return tls.recv(200) or None
    except (ssl.SSLError, ConnectionError):
        return None


def _plain_key(site, name: str, path: Path) -> Path:
    """pki/<name>.key decrypted into a 0600 file of the test's (for its TLS client)."""
    store = SecretStore.open(site.dir, load_site(site.dir)["site"]["key_file"])
    path.touch(mode=0o600)
    path.write_bytes(pki.private_key_pem(site.dir, f"{name}.key", store.pki_passphrase()))
    return path


def _refused_by_agent_bundle(lab, host: str, cert: Path) -> str:
    """openssl verify of ``cert`` against the agent's own CA bundle on ``host``."""
    out = subprocess.run(
        core.ssh_argv(lab, host, "f=$(mktemp); cat > $f; sudo openssl verify -CAfile "
                      "/etc/cmdop-agent/ca.crt $f; r=$?; rm -f $f; exit $r"),
        input=cert.read_text(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0, out.stdout
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def load(lab, site):
    """One load for both rotations: its sign-ins and token grants count against the
    site's per-address auth limit, which a second one would meet at once."""
    config = load_site(site.dir)
    workspace = config["site"]["name"]
    email = config["site"]["owner_email"] or f"admin@{config['site']['domain']}"
    key = parse_api_key(manage(lab, api_key_command(workspace, "lab-rotate-pki")))[1]
    endpoint = BundleEndpoint(lab.host("host1").ip, config["site"]["domain"],
                              site.dir / "pki" / pki.BUNDLE)
    generator = SiteLoad(endpoint, workspace, email, site.secrets["owner_password"], key,
                         machine_hostname=AGENT_HOSTS[0])
    generator.prepare()
    yield generator
    generator.stop()


def _served(lab, site, port: int, flags: str = "") -> str:
    """The SHA-256 fingerprint of the certificate host1 serves on ``port`` (read on host1
    with openssl s_client and ``flags``)."""
    out = lab_ssh(lab, "host1", f"sudo openssl s_client {flags} -connect "
                  f"{lab.host('host1').ip}:{port} </dev/null 2>/dev/null "
                  "| openssl x509 -noout -fingerprint -sha256")
    assert out.returncode == 0 and "Fingerprint" in out.stdout, out.stdout + out.stderr
    return out.stdout.strip().split("=", 1)[1]


def _fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _rotate_then_finish_under_load(lab, site, load, name: str) -> None:
    """`rotate SITE name` then `--finish` while the load runs: every kind of request served
    after each, none failed, and the agents the same processes, online all along."""
    before = fleet(lab, site.dir)
    try:
        load.start()
        rotated = cli("rotate", str(site.dir), name, "--yes")
        assert "phase switched: done" in rotated.stdout, rotated.stdout
        assert load.wait_served(load.served(), SiteLoad.KINDS), load.served()
        finished = cli("rotate", str(site.dir), "--finish", "--yes")
        assert "finished" in finished.stdout, finished.stdout
        assert load.wait_served(load.served(), SiteLoad.KINDS), load.served()
    finally:
        counts = load.stop()
    assert counts.failures == [], counts.failures[:10]
    after = fleet(lab, site.dir)
    for host in AGENT_HOSTS:
        assert after[host]["online"], after[host]
        assert after[host]["boot_id"] == before[host]["boot_id"], host


def test_ca_rotation_under_load_then_the_old_ca_is_refused(lab, site, load, tmp_path) -> None:
    bundle = site.dir / "pki" / pki.BUNDLE
    # the old CA's certificates, kept: the control plane's client one and nginx's
    old_app = (tmp_path / "old-app.crt", tmp_path / "old-app.key")
    shutil.copy(site.dir / "pki/app-host1.crt", old_app[0])
    _plain_key(site, "app-host1", old_app[1])
    old_nginx = tmp_path / "old-nginx.crt"
    shutil.copy(site.dir / "pki/nginx-host1.crt", old_nginx)
    old_ca = (site.dir / "pki/ca.crt").read_bytes()
    assert (_redis_answer(lab, site, *old_app) or b"").startswith(b"-NOAUTH")

    _rotate_then_finish_under_load(lab, site, load, "pki_ca")
    assert (site.dir / "pki/ca.crt").read_bytes() != old_ca
    new_ca = (site.dir / "pki/ca.crt").read_bytes()
    assert bundle.read_bytes() == new_ca
    for host in AGENT_HOSTS:
        there = lab_ssh(lab, host, "sudo cat /etc/cmdop-agent/ca.crt")
        assert there.stdout.encode() == new_ca, host
    # an agent no longer trusts a server certificate from the old CA
    assert "unable to get local issuer" in _refused_by_agent_bundle(lab, AGENT_HOSTS[0],
                                                                    old_nginx)
    # Redis refuses the old CA's client certificate at the handshake; takes the new one's
    assert _redis_answer(lab, site, *old_app) is None
    new_app = (site.dir / "pki/app-host1.crt", _plain_key(site, "app-host1",
                                                          tmp_path / "new-app.key"))
    assert (_redis_answer(lab, site, *new_app) or b"").startswith(b"-NOAUTH")
    # the agent session still runs a command
    assert load.echo()[0], "no agent session after the CA rotation"


def test_leaf_rotation_under_load_reloads_each_daemon_onto_its_new_certificate(lab, site,
                                                                              load) -> None:
    config = load_site(site.dir)
    # Redis asks for a client certificate: the control plane's own
    ports = {"nginx-host1": (config["control_plane"]["https_port"], ""),
             "postgres-host1": (config["postgres"]["port"], "-starttls postgres"),
             "redis-host1": (config["redis"]["port"], "-cert /etc/cmdop/tls/app.crt "
                                                      "-key /etc/cmdop/tls/app.key")}
    old = {name: _fingerprint(site.dir / f"pki/{name}.crt") for name in LEAVES}
    for name, (port, flags) in ports.items():
        assert _served(lab, site, port, flags) == old[name], name
    redis = redis_started(lab)
    _rotate_then_finish_under_load(lab, site, load, "pki_leaves")

    new = {name: _fingerprint(site.dir / f"pki/{name}.crt") for name in LEAVES}
    assert all(new[name] != old[name] for name in LEAVES), (old, new)
    # each daemon serves its new certificate: nginx and Postgres reloaded, Redis took it
    # with CONFIG SET in the same process
    for name, (port, flags) in ports.items():
        assert _served(lab, site, port, flags) == new[name], name
    assert redis_started(lab) == redis
    # --finish deleted the replaced keys
    assert not list((site.dir / "pki").glob(f"*.{pki.PREVIOUS}.*"))
