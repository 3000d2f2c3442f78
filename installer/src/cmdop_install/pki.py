"""The site's internal PKI: one ECDSA P-256 CA and a leaf certificate per service and host.

Files in ``<site>/pki/``: ``ca.crt``/``ca.key`` and ``<service>-<host>.crt``/``.key``.
Private keys are 0600 and encrypted (PKCS#8, passphrase derived from the secrets key by
``SecretStore.pki_passphrase``); ``private_key_pem`` hands out the plain PEM a daemon
needs. ``ensure_pki`` is idempotent: it issues only what is missing, due to expire within
``[pki] renew_days``, signed by another CA, or whose names or usages differ from what the
inventory now asks for. The extensions are the ones TLS scanners
and OpenSSL's verify check: CA ``basicConstraints=critical,CA:TRUE`` and
``keyUsage=critical,keyCertSign,cRLSign``; leaves ``CA:FALSE``, ``digitalSignature``, an
EKU of serverAuth and/or clientAuth and SANs for every name and address of the host.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cmdop_install.errors import UserError
from cmdop_install.fsutil import make_dir, write_atomic
from cmdop_install.inventory import Inventory
from cmdop_install.site import Site

PKI_DIR = "pki"
SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
_BACKDATE = timedelta(minutes=5)  # tolerate small clock skew between hosts
WARN_DAYS = 30  # check and status warn of an expiry this far ahead at least
# a rotation's files beside the current ones (`cmdop-install rotate` pki_leaves/pki_ca):
# <name>.next.crt/.key are staged (issued, used by nothing yet), <name>.previous.* what a
# switch replaced, kept for --rollback until --finish deletes them
NEXT, PREVIOUS = "next", "previous"
BUNDLE = "ca-bundle.crt"  # what this machine's clients should trust: see trust_bundle


@dataclass(frozen=True)
class LeafSpec:
    """What one leaf certificate must say."""

    service: str
    host: str
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    usages: tuple[x509.ObjectIdentifier, ...]

    @property
    def name(self) -> str:
        return f"{self.service}-{self.host}"


def leaf_specs(site: Site, inventory: Inventory) -> list[LeafSpec]:
    """Every leaf the site needs, from the inventory (services x hosts)."""
    wanted: list[tuple[str, str, tuple]] = [
        ("postgres", "postgres", (SERVER,)),
        ("redis", "redis", (SERVER, CLIENT)),  # CLIENT: replication between Redis nodes
        ("control_plane", "nginx", (SERVER,)),
        ("control_plane", "app", (CLIENT,)),  # mTLS client of Redis
    ]
    if site.centrifugo_enabled:
        wanted.append(("centrifugo", "centrifugo", (SERVER, CLIENT)))
    specs = []
    for group, service, usages in wanted:
        for host in inventory.groups.get(group, []):
            dns, ips = host.san_names()
            if service == "nginx":
                dns = sorted({*dns, site["site"]["domain"]})
            if service == "centrifugo":  # reached on loopback by nginx and the app
                dns, ips = sorted({*dns, "localhost"}), sorted({*ips, "127.0.0.1"})
            specs.append(LeafSpec(service, host.name, tuple(dns), tuple(ips), usages))
    return specs


def _name(common_name: str, site: Site) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"CMDOP site {site['site']['name']}"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def _load_key(path: Path, passphrase: bytes):
    data = path.read_bytes()
    try:
        return serialization.load_pem_private_key(data, passphrase)
    except TypeError:  # written unencrypted (by hand, or an older site): accept it
        return serialization.load_pem_private_key(data, None)
    except ValueError:
        raise UserError(f"{path}: cannot decrypt this private key (wrong secrets key, "
                        "or not a PEM key)") from None


def private_key_pem(site_dir: Path, name: str, passphrase: bytes) -> bytes:
    """The plain PKCS#8 PEM of ``pki/<name>`` (e.g. "redis-node1.key"), for a host."""
    path = Path(site_dir) / PKI_DIR / name
    if not path.is_file():
        raise UserError(f"{path}: missing (run `cmdop-install init` to issue it)")
    return _key_pem(_load_key(path, passphrase))


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _issue_ca(site: Site, now: datetime, rotated: bool = False
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # a rotation's CA is named apart from the one it replaces (both sit in the trust bundles
    # for a while): by the start of its key identifier
    suffix = f" {ski.digest.hex()[:8]}" if rotated else ""
    name = _name(f"{site['site']['name']} internal CA{suffix}", site)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=site["pki"]["ca_days"]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_leaf(spec: LeafSpec, site: Site, ca: x509.Certificate,
                ca_key: ec.EllipticCurvePrivateKey, now: datetime):
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in spec.ips]
    not_after = min(now + timedelta(days=site["pki"]["leaf_days"]),
                    ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{spec.service}.{spec.host}", site))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(spec.usages)), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _leaf_is_current(cert: x509.Certificate | None, spec: LeafSpec, ca: x509.Certificate,
                     renew: timedelta, now: datetime) -> bool:
    if cert is None or cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    have_dns = tuple(sorted(sans.get_values_for_type(x509.DNSName)))
    have_ips = tuple(sorted(str(i) for i in sans.get_values_for_type(x509.IPAddress)))
    return (have_dns == tuple(sorted(spec.dns)) and have_ips == tuple(sorted(spec.ips))
            and set(eku) == set(spec.usages) and cert.not_valid_after_utc - now > renew)


def ensure_pki(site_dir: Path, site: Site, inventory: Inventory,
               passphrase: bytes, new_ca: bool = True) -> list[str]:
    """Create/renew the CA and leaves as needed; return the names (re)issued.

    ``new_ca=False`` (render, deploy): only leaves are issued; a site without its CA is an
    error, since a new CA on a deployed site would cut every host off.
    """
    pki = Path(site_dir) / PKI_DIR
    make_dir(pki, 0o700)
    now = datetime.now(UTC)
    renew = timedelta(days=site["pki"]["renew_days"])
    issued = []
    ca = _load_cert(pki / "ca.crt")
    ca_key = None
    if ca is not None and (pki / "ca.key").exists():
        ca_key = _load_key(pki / "ca.key", passphrase)
    if ca is None or ca_key is None:
        # Replacing an existing CA is a rotation (issue: rotate), never done silently here.
        if (pki / "ca.crt").exists():
            raise UserError(f"{pki}/ca.key or ca.crt is missing or unreadable "
                            "(restore them from backup; a new CA would break every host)")
        if not new_ca:
            raise UserError(f"{pki}/ca.crt: missing (run `cmdop-install init {site_dir}` to "
                            "make the site CA, or restore pki/ from backup)")
        ca, ca_key = _issue_ca(site, now)
        write_atomic(pki / "ca.key", _key_pem(ca_key, passphrase), 0o600)
        write_atomic(pki / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644)
        issued.append("ca")
    for spec in leaf_specs(site, inventory):
        crt_path, key_path = pki / f"{spec.name}.crt", pki / f"{spec.name}.key"
        if key_path.exists() and _leaf_is_current(_load_cert(crt_path), spec, ca, renew, now):
            continue
        cert, key = _issue_leaf(spec, site, ca, ca_key, now)
        write_atomic(key_path, _key_pem(key, passphrase), 0o600)
        write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        issued.append(spec.name)
    if not (pki / BUNDLE).exists():
        write_bundle(site_dir, with_next=False)
    return issued


def _load_pair(pki: Path, name: str, passphrase: bytes):
    """(certificate, key) of ``pki/<name>.crt``/``.key``, or (None, None) if either is missing."""
    cert = _load_cert(pki / f"{name}.crt")
    if cert is None or not (pki / f"{name}.key").is_file():
        return None, None
    return cert, _load_key(pki / f"{name}.key", passphrase)


def _write_pair(pki: Path, name: str, cert: x509.Certificate, key, passphrase: bytes) -> None:
    # the key first: a pair is complete once its certificate exists (``_load_pair``)
    write_atomic(pki / f"{name}.key", _key_pem(key, passphrase), 0o600)
    write_atomic(pki / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def stage(site_dir: Path, site: Site, inventory: Inventory, passphrase: bytes,
          new_ca: bool) -> list[str]:
    """A rotation's first phase: issue every leaf anew as ``<name>.next`` beside the current
    one, signed by the site CA, or with ``new_ca`` by a new CA staged as ``ca.next``. What
    is staged already is kept, so a resumed rotation goes on with the same keys. Returns the
    names issued."""
    pki = Path(site_dir) / PKI_DIR
    now = datetime.now(UTC)
    issued = []
    if not new_ca:  # a CA staged by a CA rotation cut before it was recorded: not this one's
        for ext in ("crt", "key"):
            (pki / f"ca.{NEXT}.{ext}").unlink(missing_ok=True)
    ca, ca_key = _load_pair(pki, f"ca.{NEXT}" if new_ca else "ca", passphrase)
    if ca is None:
        if not new_ca:
            raise UserError(f"{pki}/ca.crt or ca.key: missing (restore pki/ from backup)")
        ca, ca_key = _issue_ca(site, now, rotated=True)
        _write_pair(pki, f"ca.{NEXT}", ca, ca_key, passphrase)
        issued.append(f"ca.{NEXT}")
    renew = timedelta(days=site["pki"]["renew_days"])
    for spec in leaf_specs(site, inventory):
        name = f"{spec.name}.{NEXT}"
        if (pki / f"{name}.key").exists() and _leaf_is_current(
                _load_cert(pki / f"{name}.crt"), spec, ca, renew, now):
            continue
        cert, key = _issue_leaf(spec, site, ca, ca_key, now)
        _write_pair(pki, name, cert, key, passphrase)
        issued.append(name)
    return issued


def _shift(site_dir: Path, source: str, displaced: str) -> list[str]:
    """Every ``<base>.<source>.<ext>`` becomes ``<base>.<ext>``, whose file (if any) becomes
    ``<base>.<displaced>.<ext>``. Two renames per file; a rerun after a cut between them
    completes it (the current file is moved away only while nothing is in its new place)."""
    pki = Path(site_dir) / PKI_DIR
    moved = []
    for path in sorted(pki.glob(f"*.{source}.*")):
        base, ext = path.name.rsplit(f".{source}.", 1)
        current, aside = pki / f"{base}.{ext}", pki / f"{base}.{displaced}.{ext}"
        if current.exists() and not aside.exists():
            os.replace(current, aside)
        os.replace(path, current)
        moved.append(path.name)
    return moved


def switch(site_dir: Path) -> list[str]:
    """The staged files become the current ones; the current ones are kept as previous."""
    return _shift(site_dir, NEXT, PREVIOUS)


def switch_back(site_dir: Path) -> list[str]:
    """A switch undone: the previous files are current again, the others staged again."""
    return _shift(site_dir, PREVIOUS, NEXT)


def drop(site_dir: Path, which: str) -> list[str]:
    """Delete every ``*.<which>.*`` file (NEXT: a rotation rolled back; PREVIOUS: retired,
    the replaced keys destroyed)."""
    gone = []
    for path in sorted((Path(site_dir) / PKI_DIR).glob(f"*.{which}.*")):
        path.unlink()
        gone.append(path.name)
    return gone


def trust_bundle(site_dir: Path, with_next: bool) -> bytes:
    """What every host trusts (its ``ca.crt``): the site CA, plus during a CA rotation the
    other one, the staged CA once admitted (``with_next``) or the one a switch replaced."""
    pki = Path(site_dir) / PKI_DIR
    parts = [read_pem(site_dir, "ca.crt")]
    for name, wanted in ((f"ca.{NEXT}.crt", with_next), (f"ca.{PREVIOUS}.crt", True)):
        if wanted and (pki / name).is_file():
            parts.append(read_pem(site_dir, name))
    # in one order whichever CA signs: a switch leaves every host's bundle as it was
    return b"".join(sorted(p if p.endswith(b"\n") else p + b"\n" for p in parts))


def write_bundle(site_dir: Path, with_next: bool) -> None:
    """``pki/ca-bundle.crt``: the trust bundle for this machine's clients (cmdop --ca)."""
    write_atomic(Path(site_dir) / PKI_DIR / BUNDLE, trust_bundle(site_dir, with_next), 0o644)


def ca_dates(site_dir: Path) -> dict[str, str] | None:
    """The site CA's first and last day, for ``status``; None without one."""
    ca = _load_cert(Path(site_dir) / PKI_DIR / "ca.crt")
    if ca is None:
        return None
    return {"issued": f"{ca.not_valid_before_utc:%Y-%m-%d}",
            "expires": f"{ca.not_valid_after_utc:%Y-%m-%d}",
            "age_days": str((datetime.now(UTC) - ca.not_valid_before_utc).days)}


def _certificates(pki: Path) -> list[Path]:
    """The current certificates of pki/: not a rotation's staged or previous ones, nor the
    bundle."""
    return [p for p in sorted(pki.glob("*.crt"))
            if p.name != BUNDLE and not p.stem.endswith((f".{NEXT}", f".{PREVIOUS}"))]


def is_issued(site_dir: Path, name: str) -> bool:
    """Both files of leaf ``name`` (e.g. "redis-node1") exist in pki/."""
    folder = Path(site_dir) / PKI_DIR
    return (folder / f"{name}.crt").is_file() and (folder / f"{name}.key").is_file()


def read_pem(site_dir: Path, name: str) -> bytes:
    """PEM bytes of ``pki/<name>`` as stored (certificates: "ca.crt", "redis-node1.crt")."""
    path = Path(site_dir) / PKI_DIR / name
    try:
        return path.read_bytes()
    except OSError:
        raise UserError(f"{path}: missing (run `cmdop-install init` to issue it)") from None


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (sorted(sans.get_values_for_type(x509.DNSName)),
            sorted(str(i) for i in sans.get_values_for_type(x509.IPAddress)))


def certificate_findings(site_dir: Path, site: Site, inventory: Inventory) -> list[str]:
    """One line per certificate that is missing, expired, expiring within ``warn_window``,
    names other hosts or addresses than inventory.py now gives, or belongs to no host.

    What ``render``/``deploy`` reissue by themselves (``ensure_pki``: a missing, renamed or
    expiring leaf) is a warning; a missing or expired CA needs the operator.
    """
    pki = Path(site_dir) / PKI_DIR
    now = datetime.now(UTC)
    reissue = "render and deploy reissue it, as does init"
    findings = []
    specs = leaf_specs(site, inventory)
    ca = _load_cert(pki / "ca.crt")
    if ca is None:
        findings.append("pki/ca.crt: missing (run `cmdop-install init` to make the site CA, "
                        "or restore pki/ from backup)")
    elif ca.not_valid_after_utc <= now:
        findings.append(f"pki/ca.crt: expired on {ca.not_valid_after_utc:%Y-%m-%d}")
    elif ca.not_valid_after_utc - now <= warn_window(site):
        findings.append(_expiry_warning("ca", ca, site, now))
    for spec in specs:
        cert = _load_cert(pki / f"{spec.name}.crt")
        if cert is None or not is_issued(site_dir, spec.name):
            findings.append(f"warning: pki/{spec.name}.crt: not issued yet ({reissue})")
            continue
        dns, ips = _sans(cert)
        left = cert.not_valid_after_utc - now
        if (dns, ips) != (sorted(spec.dns), sorted(spec.ips)):
            findings.append(f"warning: pki/{spec.name}.crt: names {', '.join(dns + ips)}, but "
                            f"inventory.py now gives {', '.join([*spec.dns, *spec.ips])} "
                            f"({reissue})")
        elif left <= timedelta(0):
            findings.append(f"warning: pki/{spec.name}.crt: expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d} ({reissue})")
        elif left <= warn_window(site):
            findings.append(_expiry_warning(spec.name, cert, site, now))
    wanted = {"ca", *(s.name for s in specs)}
    for path in _certificates(pki):
        if path.stem not in wanted:
            findings.append(f"warning: pki/{path.name}: inventory.py no longer needs it (a "
                            f"removed host or role: delete pki/{path.stem}.crt and .key)")
    return findings


def warn_window(site: Site) -> timedelta:
    """How far ahead check and status warn of an expiry: WARN_DAYS, or renew_days when
    that is longer (a leaf is then reissued as soon as it is warned of)."""
    return timedelta(days=max(WARN_DAYS, site["pki"]["renew_days"]))


def _expiry_warning(name: str, cert: x509.Certificate, site: Site, now: datetime) -> str:
    expires = cert.not_valid_after_utc
    left = expires - now
    if name == "ca":
        what = ("renew it with `cmdop-install rotate SITE pki_ca`: render and deploy never "
                "replace the site CA, and every leaf it signed stops verifying then")
    elif left <= timedelta(days=site["pki"]["renew_days"]):
        what = "render and deploy reissue it, as does init"
    else:
        renew_on = expires - timedelta(days=site["pki"]["renew_days"])
        what = f"deploy reissues it from {renew_on:%Y-%m-%d} (pki.renew_days)"
    return f"warning: pki/{name}.crt: expires in {left.days} days ({expires:%Y-%m-%d}; {what})"


def expiry_warnings(site_dir: Path, site: Site) -> list[str]:
    """``status``: one warning per certificate of pki/ (the CA's included) and the
    operator's own that expires within ``warn_window``, or has expired."""
    now = datetime.now(UTC)
    warnings = []
    for path in _certificates(Path(site_dir) / PKI_DIR):
        cert = _load_cert(path)
        if cert is None:
            continue
        if cert.not_valid_after_utc <= now:
            warnings.append(f"warning: pki/{path.name}: expired on "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}")
        elif cert.not_valid_after_utc - now <= warn_window(site):
            warnings.append(_expiry_warning(path.stem, cert, site, now))
    return warnings + public_tls_expiry(site)


def expiry_dates(site_dir: Path) -> dict[str, str]:
    """Each certificate of pki/ (by name, e.g. "nginx-node1") and the day it expires."""
    dates = {}
    for path in _certificates(Path(site_dir) / PKI_DIR):
        cert = _load_cert(path)
        if cert is not None:
            dates[path.stem] = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    return dates


def public_tls(site: Site) -> tuple[bytes, bytes] | None:
    """(chain PEM, key PEM) of the operator's public certificate, checked; None if unset.

    Checked here so that a wrong file fails in ``check``/``render`` and not on a host:
    the key must match, the certificate must name ``[site] domain`` and not be expired.
    """
    if not site.public_tls:
        return None
    cert_path, key_path = Path(site["site"]["tls_cert_file"]), Path(site["site"]["tls_key_file"])
    try:
        chain, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise UserError(f"site.toml: site.tls_cert_file/tls_key_file: cannot read "
                        f"{exc.filename} ({exc.strerror})") from None
    try:
        cert = x509.load_pem_x509_certificates(chain)[0]
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError):
        raise UserError(f"site.toml: site.tls_cert_file/tls_key_file: {cert_path} or "
                        f"{key_path} is not an unencrypted PEM certificate/key") from None
    if key.public_key().public_bytes(*_SPKI) != cert.public_key().public_bytes(*_SPKI):
        raise UserError(f"site.toml: site.tls_key_file: {key_path} is not the key of "
                        f"{cert_path} (use the matching pair)")
    domain = site["site"]["domain"]
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    if not any(_dns_matches(n, domain) for n in names.get_values_for_type(x509.DNSName)):
        raise UserError(f"site.toml: site.tls_cert_file: {cert_path} does not name {domain} "
                        "(get a certificate for site.domain)")
    if cert.not_valid_after_utc <= datetime.now(UTC):
        raise UserError(f"site.toml: site.tls_cert_file: {cert_path} expired on "
                        f"{cert.not_valid_after_utc:%Y-%m-%d} (renew it)")
    return chain, key_pem


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _dns_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):
        return name.split(".", 1)[-1] == pattern[2:] and name.count(".") >= 2
    return pattern.lower() == name.lower()


def public_tls_expiry(site: Site) -> list[str]:
    """A warning when the operator's certificate expires within ``warn_window``."""
    pair = public_tls(site)
    if pair is None:
        return []
    cert = x509.load_pem_x509_certificates(pair[0])[0]
    left = cert.not_valid_after_utc - datetime.now(UTC)
    if left <= warn_window(site):
        return [f"warning: {site['site']['tls_cert_file']}: expires in {left.days} days "
                f"({cert.not_valid_after_utc:%Y-%m-%d}; renew it and render again)"]
    return []
