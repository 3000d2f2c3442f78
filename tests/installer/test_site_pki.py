"""The internal PKI: exact CA/leaf extensions, SANs from the inventory, minimal reissue."""

import stat
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cmdop_install import pki
from cmdop_install.check import check_site as _check_site
from cmdop_install.errors import UserError
from cmdop_install.inventory import load_inventory
from cmdop_install.secrets import SecretStore
from cmdop_install.site import load_site
from cmdop_install.sitedir import SiteDir
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support.sites import TEST_KEY, make_site, write_site

pytestmark = pytest.mark.unit


@pytest.fixture
def site_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    return make_site(tmp_path / "site")


def check_site(site_dir):
    return _check_site(SiteDir.load(site_dir))


def _passphrase(site_dir):
    return SecretStore.open(site_dir, "").pki_passphrase()


def _cert(site_dir, name):
    return x509.load_pem_x509_certificate((site_dir / "pki" / f"{name}.crt").read_bytes())


def test_ca_is_p256_with_critical_ca_constraints(site_dir):
    ca = _cert(site_dir, "ca")
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature


@pytest.mark.parametrize("name, usages", [
    ("postgres-node1", {ExtendedKeyUsageOID.SERVER_AUTH}),
    ("redis-node1", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
    ("nginx-node1", {ExtendedKeyUsageOID.SERVER_AUTH}),
    ("app-node1", {ExtendedKeyUsageOID.CLIENT_AUTH}),
])
def test_leaves_have_sans_usages_and_verify_with_openssl(site_dir, name, usages):
    leaf = _cert(site_dir, name)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == usages
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"node1", "node1.internal"} <= set(sans.get_values_for_type(x509.DNSName))
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    if name == "nginx-node1":
        assert "cmdop.example.com" in sans.get_values_for_type(x509.DNSName)
    key_path = site_dir / "pki" / f"{name}.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    purpose = "sslserver" if ExtendedKeyUsageOID.SERVER_AUTH in usages else "sslclient"
    done = subprocess.run(["openssl", "verify", "-x509_strict", "-purpose", purpose,
                           "-CAfile", str(site_dir / "pki/ca.crt"),
                           str(site_dir / "pki" / f"{name}.crt")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_second_run_issues_nothing(site_dir):
    site, inventory = load_site(site_dir), load_inventory(site_dir)
    assert pki.ensure_pki(site_dir, site, inventory, _passphrase(site_dir)) == []


def test_changed_address_reissues_only_the_affected_leaves(site_dir):
    write_site(site_dir, address="10.9.8.7")
    site, inventory = load_site(site_dir), load_inventory(site_dir)
    ca_before = (site_dir / "pki/ca.crt").read_bytes()
    issued = pki.ensure_pki(site_dir, site, inventory, _passphrase(site_dir))
    assert sorted(issued) == ["app-node1", "nginx-node1", "postgres-node1", "redis-node1"]
    assert (site_dir / "pki/ca.crt").read_bytes() == ca_before


def test_expiring_leaf_is_warned_by_check_and_reissued_by_init(site_dir):
    site, inventory = load_site(site_dir), load_inventory(site_dir)
    spec = next(s for s in pki.leaf_specs(site, inventory) if s.name == "redis-node1")
    ca = _cert(site_dir, "ca")
    ca_key = serialization.load_pem_private_key((site_dir / "pki/ca.key").read_bytes(),
                                                _passphrase(site_dir))
    then = datetime.now(UTC) - timedelta(days=site["pki"]["leaf_days"] - 10)
    cert, _ = pki._issue_leaf(spec, site, ca, ca_key, then)
    (site_dir / "pki/redis-node1.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    findings = check_site(site_dir)
    assert [f for f in findings if "redis-node1" in f] == [
        f"warning: pki/redis-node1.crt: expires in 9 days "
        f"({cert.not_valid_after_utc:%Y-%m-%d}; render and deploy reissue it, as does init)"]
    assert pki.ensure_pki(site_dir, site, inventory, _passphrase(site_dir)) == ["redis-node1"]
    assert pki.certificate_findings(site_dir, site, inventory) == []


def _reissue_expiring(site_dir, name, days_left):
    """pki/<name>.crt as the site CA signs it, expiring ``days_left`` days from now."""
    site, inventory = load_site(site_dir), load_inventory(site_dir)
    spec = next(s for s in pki.leaf_specs(site, inventory) if s.name == name)
    ca_key = serialization.load_pem_private_key((site_dir / "pki/ca.key").read_bytes(),
                                                _passphrase(site_dir))
    then = datetime.now(UTC) - timedelta(days=site["pki"]["leaf_days"] - days_left)
    cert, _ = pki._issue_leaf(spec, site, _cert(site_dir, "ca"), ca_key, then)
    (site_dir / f"pki/{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_a_leaf_is_warned_of_30_days_ahead_even_when_renewed_later(site_dir):
    write_site(site_dir, {"pki.renew_days": 10})
    cert = _reissue_expiring(site_dir, "nginx-node1", 25)
    renew_on = cert.not_valid_after_utc - timedelta(days=10)
    warning = (f"warning: pki/nginx-node1.crt: expires in 24 days "
               f"({cert.not_valid_after_utc:%Y-%m-%d}; deploy reissues it from "
               f"{renew_on:%Y-%m-%d} (pki.renew_days))")
    assert [f for f in check_site(site_dir) if "nginx-node1" in f] == [warning]
    site = load_site(site_dir)
    assert pki.expiry_warnings(site_dir, site) == [warning]
    # not yet due: deploy leaves it; 40 days ahead nothing is said
    assert pki.ensure_pki(site_dir, site, load_inventory(site_dir), _passphrase(site_dir)) == []
    _reissue_expiring(site_dir, "nginx-node1", 40)
    assert pki.expiry_warnings(site_dir, site) == []
    assert [f for f in check_site(site_dir) if "nginx-node1" in f] == []


def test_status_warns_of_an_expired_leaf_and_a_leaf_due_for_renewal(site_dir):
    soon = _reissue_expiring(site_dir, "redis-node1", 5)
    gone = _reissue_expiring(site_dir, "app-node1", -2)
    assert pki.expiry_warnings(site_dir, load_site(site_dir)) == [
        f"warning: pki/app-node1.crt: expired on {gone.not_valid_after_utc:%Y-%m-%d}",
        f"warning: pki/redis-node1.crt: expires in 4 days ({soon.not_valid_after_utc:%Y-%m-%d}"
        "; render and deploy reissue it, as does init)",
    ]


def test_a_site_ca_near_its_end_is_warned_of_but_never_replaced(site_dir):
    site = load_site(site_dir)
    ca_key = serialization.load_pem_private_key((site_dir / "pki/ca.key").read_bytes(),
                                                _passphrase(site_dir))
    ca = _cert(site_dir, "ca")
    expires = datetime.now(UTC) + timedelta(days=20, hours=1)
    short = (x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject)
             .public_key(ca.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(datetime.now(UTC) - timedelta(days=1)).not_valid_after(expires))
    for ext in ca.extensions:
        short = short.add_extension(ext.value, ext.critical)
    (site_dir / "pki/ca.crt").write_bytes(
        short.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    warning = (f"warning: pki/ca.crt: expires in 20 days ({expires:%Y-%m-%d}; renew it with "
               "`cmdop-install rotate SITE pki_ca`: render and deploy never replace the site "
               "CA, and every leaf it signed stops verifying then)")
    assert warning in check_site(site_dir)
    assert warning in pki.expiry_warnings(site_dir, site)
    before = (site_dir / "pki/ca.crt").read_bytes()
    pki.ensure_pki(site_dir, site, load_inventory(site_dir), _passphrase(site_dir))
    assert (site_dir / "pki/ca.crt").read_bytes() == before


def test_lost_ca_key_is_an_error_not_a_silent_new_ca(site_dir):
    (site_dir / "pki/ca.key").unlink()
    site, inventory = load_site(site_dir), load_inventory(site_dir)
    with pytest.raises(Exception, match="restore them from backup"):
        pki.ensure_pki(site_dir, site, inventory, _passphrase(site_dir))


def test_centrifugo_leaf_answers_on_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site_dir = make_site(tmp_path / "cf", {"centrifugo.binary": "/bin/true"}, centrifugo=True)
    sans = _cert(site_dir, "centrifugo-node1").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(i) for i in sans.get_values_for_type(x509.IPAddress)]


def _public_pair(tmp_path, names=("cmdop.example.com",), days=90):
    """A certificate from some other CA (standing in for a public one) and its key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(key, hashes.SHA256()))
    crt, pem_key = tmp_path / "public.crt", tmp_path / "public.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    pem_key.chmod(0o600)
    return crt, pem_key


def test_operator_public_certificate_goes_to_nginx_and_agents_use_system_cas(tmp_path,
                                                                           monkeypatch):
    from cmdop_install.render import load_for_render, render_host

    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    crt, key = _public_pair(tmp_path, names=("*.example.com",))
    site_dir = make_site(tmp_path / "site", {"site.tls_cert_file": str(crt),
                                             "site.tls_key_file": str(key)}, agents=True)
    site, inventory, secrets, pem = load_for_render(site_dir)
    node = {f.path: f for f in render_host(site, inventory, "node1", secrets, pem)}
    assert node["/etc/nginx/tls/cmdop.crt"].content == crt.read_bytes()
    assert node["/etc/nginx/tls/cmdop.key"].mode == 0o600
    agent = {f.path: f for f in render_host(site, inventory, "agent1", secrets, pem)}
    assert 'ca_file = "system"' in agent["/etc/cmdop-agent/agent.toml"].content.decode()
    assert "/etc/cmdop-agent/ca.crt" not in agent
    assert check_site(site_dir) == []


@pytest.mark.parametrize("problem, message", [
    ("other-name", "does not name cmdop.example.com"),
    ("other-key", "is not the key of"),
    ("expiring", "warning: "),
])
def test_operator_public_certificate_problems(tmp_path, monkeypatch, problem, message):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    names = ("www.example.org",) if problem == "other-name" else ("cmdop.example.com",)
    crt, key = _public_pair(tmp_path, names=names, days=10 if problem == "expiring" else 90)
    if problem == "other-key":
        other = tmp_path / "other"
        other.mkdir()
        _, key = _public_pair(other)
    site_dir = make_site(tmp_path / "site", {"site.tls_cert_file": str(crt),
                                             "site.tls_key_file": str(key)})
    if problem == "expiring":
        assert [f for f in check_site(site_dir) if message in f and "expires in 9 days" in f]
        return
    with pytest.raises(UserError, match=message) as err:
        check_site(site_dir)
    assert "PRIVATE KEY" not in err.value.message


def test_private_keys_at_rest_need_the_secrets_key(site_dir):
    for key in (site_dir / "pki").glob("*.key"):
        text = key.read_text()
        assert text.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----"), key.name
        with pytest.raises(TypeError):  # no passphrase: unusable
            serialization.load_pem_private_key(text.encode(), None)
    plain = pki.private_key_pem(site_dir, "redis-node1.key", _passphrase(site_dir))
    assert plain.startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = _cert(site_dir, "redis-node1")
    assert serialization.load_pem_private_key(plain, None).public_key() == cert.public_key()
    with pytest.raises(UserError, match="cannot decrypt this private key"):
        pki.private_key_pem(site_dir, "redis-node1.key", b"not-the-passphrase")
