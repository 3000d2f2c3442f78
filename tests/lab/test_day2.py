"""Day 2 on a deployed lab site: backup and restore, and certificates renewed by deploy
with no operator step.

The site (conftest ``site``): host1 carries Postgres, Redis and the control plane.
"""

import hashlib
import http.client
import json
import socket
import ssl
import stat
import struct
import subprocess
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cmdop_install import pki, restore
from cmdop_install.inventory import load_inventory
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.secrets import SecretStore
from cmdop_install.site import load_site
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.lab.helpers import cli, lab_ssh, row_counts
from tests.support.services import pg_bindir

pytestmark = pytest.mark.lab

_POSTGRES_SSL_REQUEST = struct.pack("!II", 8, 80877103)


def _served(ip: str, port: int, ca: Path, postgres: bool = False) -> bytes:
    """The certificate (DER) a daemon presents on ``ip:port``, verified with the site CA."""
    with socket.create_connection((ip, port), timeout=5) as raw:
        if postgres:  # Postgres answers 'S' to its SSLRequest, then the handshake begins
            raw.sendall(_POSTGRES_SSL_REQUEST)
            assert raw.recv(1) == b"S"
        context = ssl.create_default_context(cafile=str(ca))
        with context.wrap_socket(raw, server_hostname=ip) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _pki_der(site_dir: Path, name: str) -> bytes:
    cert = x509.load_pem_x509_certificate((site_dir / "pki" / f"{name}.crt").read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def _make_expiring(site_dir: Path, name: str, days_left: int) -> None:
    """pki/<name>.crt replaced by one the site CA signs, ``days_left`` days from its end."""
    site, inventory = load_site(site_dir), load_inventory(site_dir)
    passphrase = SecretStore.open(site_dir, site["site"]["key_file"]).pki_passphrase()
    spec = next(s for s in pki.leaf_specs(site, inventory) if s.name == name)
    ca = x509.load_pem_x509_certificate((site_dir / "pki/ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((site_dir / "pki/ca.key").read_bytes(),
                                                passphrase)
    then = datetime.now(UTC) - timedelta(days=site["pki"]["leaf_days"] - days_left)
    cert, _ = pki._issue_leaf(spec, site, ca, ca_key, then)
    (site_dir / f"pki/{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_leaves_due_for_renewal_are_reissued_and_served_after_one_deploy(lab, site) -> None:
    ip = lab.host("host1").ip
    daemons = {"nginx-host1": (443, False), "postgres-host1": (5432, True),
               "redis-host1": (6379, False)}
    before = {name: _served(ip, port, site.ca, pg) for name, (port, pg) in daemons.items()}
    for name in daemons:
        assert before[name] == _pki_der(site.dir, name), name
        _make_expiring(site.dir, name, 5)
    check = cli("check", str(site.dir))
    for name in daemons:
        assert f"warning: pki/{name}.crt: expires in 4 days" in check.stdout + check.stderr
    warnings = json.loads(cli("status", str(site.dir), "--json").stdout)["warnings"]
    assert sorted(w.split(":")[1].strip() for w in warnings) == [
        f"pki/{name}.crt" for name in sorted(daemons)]
    deployed = cli("deploy", str(site.dir))
    assert deployed.returncode == 0
    for name, (port, pg) in daemons.items():
        now = _served(ip, port, site.ca, pg)
        assert now == _pki_der(site.dir, name), f"{name}: still serves the old certificate"
        assert now != before[name]
        left = x509.load_der_x509_certificate(now).not_valid_after_utc - datetime.now(UTC)
        assert left > timedelta(days=300), name
    assert json.loads(cli("status", str(site.dir), "--json").stdout)["warnings"] == []


def test_backup_seals_both_databases_and_the_site_folder_without_the_key(lab, site,
                                                                          tmp_path) -> None:
    done = cli("backup", str(site.dir), "--out", str(tmp_path))
    archive = Path(done.stdout.strip().removeprefix("backup: "))
    assert archive.parent == tmp_path and archive.name.startswith("labsite-")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert not any(value in done.stdout + done.stderr for value in site.secrets.values())
    key_file = load_site(site.dir)["site"]["key_file"]
    plain = tmp_path / "plain.tar"
    SecretStore.open(site.dir, key_file).open_sealed(archive, plain)
    out = tmp_path / "opened"
    with tarfile.open(plain) as tar:  # plain files only (Python 3.11.2 has no filter=)
        restore.extract_plain_members(tar, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["site"] == "labsite"
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    assert {"db/app.dump", "db/audit.dump", "site/site.toml", "site/secrets.enc",
            "site/pki/ca.crt"} <= set(manifest["files"])
    key = Path(key_file).read_bytes().strip()
    assert not [n for n in manifest["files"] if key in (out / n).read_bytes()]
    bindir = pg_bindir()
    assert bindir is not None
    for dump, table in (("app", "identity_workspace"), ("audit", "audit_auditevent")):
        listing = subprocess.run(
            [str(bindir / "pg_restore"), "--list", str(out / f"db/{dump}.dump")],
            capture_output=True, text=True, check=True).stdout
        assert f"TABLE DATA public {table}" in listing, dump
    # the database host kept nothing of this run in the SSH user's home
    assert lab_ssh(lab, "host1", "ls -a ~").stdout.count(".cmdop-backup-") == 0


def test_the_database_host_backs_up_on_its_timer_into_private_files(lab, site) -> None:
    assert lab_ssh(lab, "host1", "systemctl is-enabled cmdop-backup.timer").stdout.strip() \
        == "enabled"
    ran = lab_ssh(lab, "host1", "sudo systemctl start cmdop-backup.service && sudo sh -c "
                  "\"stat -c '%a %n' /var/backups/cmdop /var/backups/cmdop/labsite-*Z/*\"")
    assert ran.returncode == 0, ran.stderr
    modes = dict(line.split(" ", 1)[::-1] for line in ran.stdout.splitlines())
    assert modes.pop("/var/backups/cmdop") == "700"
    assert sorted(Path(p).name for p in modes) == ["SHA256SUMS", "app.dump", "audit.dump"]
    assert set(modes.values()) == {"600"}


TABLES = {"cmdop": ("identity_user", "identity_workspace", "identity_apikey",
                    "machines_machine", "cmdop_sessions_session"),
          "cmdop_audit": ("audit_auditevent",)}


def _machines(lab, site, key: str) -> int:
    """The status of listing the workspace's machines with API key ``key`` (waiting, at most
    a minute, while the control plane is still starting behind nginx)."""
    ctx = ssl.create_default_context(cafile=str(site.ca))
    ctx.check_hostname = False  # the certificate names the site's domain; we dial the IP
    domain = load_site(site.dir)["site"]["domain"]
    deadline = time.monotonic() + 60
    while True:
        conn = http.client.HTTPSConnection(lab.host("host1").ip, 443, context=ctx, timeout=10)
        conn.request("GET", "/api/v1/workspaces/labsite/machines",
                     headers={"Host": domain, "Authorization": f"Bearer {key}"})
        status = conn.getresponse().status
        conn.close()
        if status not in (502, 503, 504) or time.monotonic() > deadline:
            return status
        time.sleep(1)


def test_restore_brings_the_databases_back_with_old_keys_and_agents(lab, site, tmp_path):
    def issue(name: str) -> str:
        out = lab_ssh(lab, "host1", f"sudo {api_key_command('labsite', name)}")
        assert out.returncode == 0, out.stderr
        return parse_api_key(out.stdout)[1]

    old_key = issue("before-backup")
    assert _machines(lab, site, old_key) == 200
    before = row_counts(lab, TABLES)
    archive = Path(cli("backup", str(site.dir), "--out", str(tmp_path)).stdout.strip()
                   .removeprefix("backup: "))
    later_key = issue("after-backup")  # a row the restore must take away
    assert row_counts(lab, TABLES) != before
    # refused archives touch nothing: one flipped byte, then another site's
    flipped = tmp_path / "flipped.cmdop-backup"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    flipped.write_bytes(bytes(data))
    refused = cli("restore", str(site.dir), str(flipped), "--yes", check=False)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "damaged or modified" in refused.stderr
    assert _machines(lab, site, later_key) == 200
    done = cli("restore", str(site.dir), str(archive), "--yes")
    assert "audit chain intact" in done.stdout
    assert row_counts(lab, TABLES) == before
    assert _machines(lab, site, old_key) == 200
    assert _machines(lab, site, later_key) == 401
    # each agent polls again with the credential it enrolled with (online in the fleet)
    deadline = time.monotonic() + 120
    while True:
        hosts = json.loads(cli("status", str(site.dir), "--json").stdout)["hosts"]
        agents = [c for h in hosts for c in h["components"] if c["component"] == "agents"]
        if agents and all(c["online"] for c in agents):
            break
        assert time.monotonic() < deadline, agents
        time.sleep(5)
