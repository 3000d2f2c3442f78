"""The documented first-site flow without hosts: `init`, edit inventory.py, `check`, `render`.

Certificates follow the inventory (reissued by render, reported by check), render refuses
what check refuses and leaves nothing behind when it fails, `_sudo` host data works, and the
command line starts without pyinfra. The same flow onto a real host is
tests/lab/test_first_site.py.
"""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cmdop_install import manage
from cmdop_install.check import check_site
from cmdop_install.inventory import parse_inventory
from cmdop_install.sitedir import SiteDir
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.sites import TEST_KEY, make_site, write_site

pytestmark = pytest.mark.unit

ERROR = "cmdop-install: error: "


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    return make_site(tmp_path / "site")


def _names(site: Path, leaf: str) -> list[str]:
    cert = x509.load_pem_x509_certificate((site / "pki" / f"{leaf}.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*sans.get_values_for_type(x509.DNSName),
            *(str(i) for i in sans.get_values_for_type(x509.IPAddress))]


def _set_inventory(site: Path, text: str) -> None:
    (site / "inventory.py").write_text(text)


# ---------------------------------------------------------------- certificates


def test_a_changed_address_is_reported_by_check_and_reissued_by_render(site, run, tmp_path):
    write_site(site, address="10.9.8.7")  # the operator sets the host's real address
    code, out, err = run("check", str(site))
    assert code == 0, err
    assert ("warning: pki/postgres-node1.crt: names node1, node1.internal, 127.0.0.1, but "
            "inventory.py now gives node1, node1.internal, 10.9.8.7 (render and deploy reissue "
            "it, as does init)") in out.splitlines()

    code, out, err = run("render", str(site), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert out.splitlines()[0] == (
        "issued certificates: postgres-node1, redis-node1, nginx-node1, app-node1")
    for leaf in ("postgres-node1", "redis-node1", "nginx-node1", "app-node1"):
        assert "10.9.8.7" in _names(site, leaf) and "127.0.0.1" not in _names(site, leaf)
    rendered = tmp_path / "out/node1/etc/postgresql/tls/server.crt"
    assert rendered.read_bytes() == (site / "pki/postgres-node1.crt").read_bytes()
    code, out, _ = run("check", str(site))
    assert (code, out) == (0, "check: ok\n")


def test_a_new_host_is_issued_its_certificates_and_the_old_ones_are_reported(site, run,
                                                                             tmp_path):
    _set_inventory(site, (site / "inventory.py").read_text().replace(
        "postgres = [_node1]", 'postgres = [("db1", {"ssh_hostname": "127.0.0.3"})]'))
    code, out, err = run("check", str(site))
    assert code == 0, err
    lines = out.splitlines()
    assert "warning: pki/postgres-db1.crt: not issued yet (render and deploy reissue it, as " \
           "does init)" in lines
    assert ("warning: pki/postgres-node1.crt: inventory.py no longer needs it (a removed host "
            "or role: delete pki/postgres-node1.crt and .key)") in lines
    assert "warning: db1: its files are linted once its certificates are issued " \
           "(`cmdop-install render` or `deploy` issue them)" in lines

    code, out, err = run("render", str(site), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert out.splitlines()[0] == "issued certificates: postgres-db1"
    assert _names(site, "postgres-db1") == ["db1", "127.0.0.3"]
    code, out, _ = run("check", str(site))
    assert code == 0 and "postgres-db1" not in out and "warning: db1" not in out
    assert (site / "pki/postgres-node1.crt").exists(), "a stale certificate is reported, kept"


def test_render_never_makes_a_new_ca(site, run, tmp_path):
    for name in ("ca.crt", "ca.key"):
        (site / "pki" / name).unlink()
    code, _, err = run("render", str(site), "--out", str(tmp_path / "out"))
    assert code == 1
    assert err == (f"{ERROR}{site}/pki/ca.crt: missing (run `cmdop-install init {site}` to make "
                   "the site CA, or restore pki/ from backup)\n")
    assert not (site / "pki/ca.crt").exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- render refuses like check

NODE = '_n = ("node1", {"ssh_hostname": "127.0.0.1"})\n'
BROKEN = {
    "duplicate host": NODE + 'postgres = [_n]\nredis = [("node1", {"ssh_hostname": '
                             '"127.0.0.9"})]\ncontrol_plane = [_n]\n',
    "duplicate address": NODE + 'postgres = [_n]\nredis = [("cache1", {"ssh_hostname": '
                                '"127.0.0.1"})]\ncontrol_plane = [_n]\n',
    "no postgres host": NODE + "postgres = []\nredis = [_n]\ncontrol_plane = [_n]\n",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_render_refuses_an_inventory_that_check_refuses(site, run, tmp_path, case):
    _set_inventory(site, BROKEN[case])
    pki_before = sorted(p.name for p in (site / "pki").iterdir())
    check_code, check_out, _ = run("check", str(site))
    first = next(line for line in check_out.splitlines() if not line.startswith("warning:"))
    code, out, err = run("render", str(site), "--out", str(tmp_path / "out"))
    assert (check_code, code) == (1, 1)
    assert err.startswith(f"{ERROR}`cmdop-install check {site}` found ")
    assert err.endswith(f"problem(s), nothing was rendered; first: {first}\n")
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert sorted(p.name for p in (site / "pki").iterdir()) == pki_before, "issued for it"


def _pair(folder: Path, cert_key: ec.EllipticCurvePrivateKey,
          file_key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """A certificate for cmdop.example.com over ``cert_key``, and ``file_key`` as its key."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmdop.example.com")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(cert_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("cmdop.example.com")]),
                           False)
            .sign(cert_key, hashes.SHA256()))
    folder.mkdir(exist_ok=True)
    crt, key = folder / "public.crt", folder / "public.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(file_key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key.chmod(0o600)
    return crt, key


def _use_public_tls(site: Path, crt: Path, key: Path) -> None:
    toml = site / "site.toml"
    text = toml.read_text().replace('tls_cert_file = ""', f'tls_cert_file = "{crt}"')
    toml.write_text(text.replace('tls_key_file = ""', f'tls_key_file = "{key}"'))


@pytest.mark.parametrize("problem", ["missing", "mismatched"])
def test_a_bad_public_certificate_leaves_no_file_and_keeps_the_earlier_render(
        site, run, tmp_path, problem):
    out = tmp_path / "out"
    assert run("render", str(site), "--out", str(out))[0] == 0
    before = (out / "manifest.json").read_bytes()
    one = ec.generate_private_key(ec.SECP256R1())
    other = one if problem == "missing" else ec.generate_private_key(ec.SECP256R1())
    crt, key = _pair(tmp_path / "public", one, other)
    if problem == "missing":
        crt.unlink()
    _use_public_tls(site, crt, key)
    code, _, err = run("render", str(site), "--out", str(out))
    assert code == 1 and err.startswith(f"{ERROR}site.toml: site.tls_") and err.count("\n") == 1
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "public", "site"]


def test_render_replaces_an_earlier_render_whole_and_nothing_else(site, run, tmp_path):
    out = tmp_path / "out"
    assert run("render", str(site), "--out", str(out))[0] == 0
    (out / "node1" / "left-over").write_text("from an older render")
    assert run("render", str(site), "--out", str(out), "--host", "node1")[0] == 0
    assert not (out / "node1" / "left-over").exists()
    assert list(json.loads((out / "manifest.json").read_text())["hosts"]) == ["node1"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = run("render", str(site), "--out", str(mine))
    assert code == 1
    assert err == (f"{ERROR}--out {mine}: not empty and not an earlier render (no "
                   "manifest.json); give a new or empty folder\n")
    assert (mine / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- host data


def test_sudo_in_host_data_is_accepted_and_not_handed_to_pyinfra(site):
    node = ("node1", {"ssh_hostname": "10.0.0.5", "ssh_user": "deploy", "_sudo": True})
    inventory = parse_inventory({"postgres": [node], "redis": [node], "control_plane": [node]})
    assert inventory.pyinfra_groups()["postgres"] == [
        ("node1", {"ssh_hostname": "10.0.0.5", "ssh_user": "deploy"})]
    sd = SiteDir.load(site)
    assert [f for f in check_site(SiteDir(sd.path, sd.config, inventory))
            if not f.startswith("warning:")] == []


def test_another_escalation_user_is_refused_by_check(site, run):
    _set_inventory(site, (site / "inventory.py").read_text().replace(
        '"dns_names"', '"_sudo_user": "postgres", "dns_names"'))
    code, out, _ = run("check", str(site))
    assert code == 1
    assert ("inventory.py: node1: _sudo_user is not supported (cmdop-install runs as the SSH "
            "user and uses sudo where it needs root: remove it)") in out.splitlines()


def test_secrets_commands_work_while_the_inventory_is_being_edited(site, run):
    _set_inventory(site, "postgres = [\n")  # half-written
    code, out, err = run("secrets", "list", str(site))
    assert code == 0 and "owner_password" in out, err
    code, _, err = run("check", str(site))
    assert code == 1 and err.startswith(f"{ERROR}inventory.py:"), err


# ---------------------------------------------------------------- the control plane's machines


def test_an_inventory_host_is_found_by_its_own_host_name():
    output = "\n".join([
        "Warning: some line that is not ours",
        json.dumps({"hostname": "web-07.dc1", "online": True, "last_seen": "2026-01-01T00:00:00Z",
                    "agent_version": "0.1.0", "boot_id": "b", "os": "Linux"}),
    ])
    fleet = manage.parse_fleet(output)
    assert list(fleet) == ["web-07.dc1"]
    assert manage.machine_of(fleet, "Web-07.DC1\n")["online"] is True  # `hostname` output
    assert manage.machine_of(fleet, "node1") == {}  # the inventory name means nothing to it


# ---------------------------------------------------------------- start-up


def test_the_command_line_starts_without_pyinfra_or_the_renderer():
    probe = (
        "import sys\n"
        "from cmdop_install.cli import main\n"
        "code = main(['--help'])\n"
        "heavy = ('pyinfra', 'gevent', 'jinja2', 'cryptography', 'paramiko')\n"
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.splitlines()[-1] == "0 []"
    assert "deploy" in done.stdout and "agents" in done.stdout
