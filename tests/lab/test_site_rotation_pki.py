"""`cmdop-install rotate SITE pki_ca` then `--finish` on the deployed lab site, under load.

The load (tests/support/site_load.py: sign-ins, a browser session, OAuth refreshes, API-key
calls, an agent session echoing input) runs through nginx all along, trusting what the
site's ``pki/ca-bundle.crt`` says at each request, as an operator's client given that file
would; the lab agents long-poll. The CA rotation must fail none of it and restart no agent.
After --finish every host's bundle is the new CA alone: Redis refuses a client
certificate signed by the old CA at the handshake (mutual TLS), an agent host's bundle
fails the old CA's nginx certificate, and an agent session still runs a command.
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

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import cli, fleet, lab_ssh, manage
from tests.support.site_load import BundleEndpoint, SiteLoad

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


def test_ca_rotation_under_load_then_the_old_ca_is_refused(lab, site, tmp_path) -> None:
    config = load_site(site.dir)
    workspace = config["site"]["name"]
    email = config["site"]["owner_email"] or f"admin@{config['site']['domain']}"
    key = parse_api_key(manage(lab, api_key_command(workspace, "lab-rotate-pki")))[1]
    bundle = site.dir / "pki" / pki.BUNDLE
    endpoint = BundleEndpoint(lab.host("host1").ip, config["site"]["domain"], bundle)
    load = SiteLoad(endpoint, workspace, email, site.secrets["owner_password"], key,
                    machine_hostname=AGENT_HOSTS[0])
    load.prepare()
    # the old CA's certificates, kept: the control plane's client one and nginx's
    old_app = (tmp_path / "old-app.crt", tmp_path / "old-app.key")
    shutil.copy(site.dir / "pki/app-host1.crt", old_app[0])
    _plain_key(site, "app-host1", old_app[1])
    old_nginx = tmp_path / "old-nginx.crt"
    shutil.copy(site.dir / "pki/nginx-host1.crt", old_nginx)
    old_ca = (site.dir / "pki/ca.crt").read_bytes()
    assert (_redis_answer(lab, site, *old_app) or b"").startswith(b"-NOAUTH")
    before = fleet(lab, site.dir)

    try:
        load.start()
        rotated = cli("rotate", str(site.dir), "pki_ca", "--yes")
        assert "phase switched: done" in rotated.stdout, rotated.stdout
        assert (site.dir / "pki/ca.crt").read_bytes() != old_ca
        assert load.wait_served(load.served(), SiteLoad.KINDS), load.served()
        finished = cli("rotate", str(site.dir), "--finish", "--yes")
        assert "finished" in finished.stdout, finished.stdout
        assert load.wait_served(load.served(), SiteLoad.KINDS), load.served()
    finally:
        counts = load.stop()
    assert counts.failures == [], counts.failures[:10]
    after = fleet(lab, site.dir)
    for host in AGENT_HOSTS:  # the same agent processes, online all along
        assert after[host]["online"], after[host]
        assert after[host]["boot_id"] == before[host]["boot_id"], host

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
