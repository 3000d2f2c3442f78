"""``cmdop-server --dev serve``: the developer endpoint, HTTPS with a self-signed certificate.

It binds 127.0.0.1:8443 by default (production never listens there: it sits behind nginx on
443), speaks TLS 1.3 only, and keeps its certificate under ``$CMDOP_DEV_STATE``
(default ``~/.local/state/cmdop-dev``). There is no plaintext mode here either.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

DEFAULT_BIND = "127.0.0.1:8443"


def ssl_context(conf, default_ssl_context_factory):
    """gunicorn hook (21.0+): TLS 1.3 minimum on the dev endpoint."""
    import ssl

    ctx = default_ssl_context_factory()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def ensure_certificate(state: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = state / "dev.crt", state / "dev.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmdop dev (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp = key_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.replace(tmp, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="cmdop-server --dev serve", description=__doc__)
    parser.add_argument("--bind", default=DEFAULT_BIND)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    state = Path(os.environ.get("CMDOP_DEV_STATE")
                 or Path.home() / ".local" / "state" / "cmdop-dev")
    cert, key = ensure_certificate(state)
    print(f"cmdop dev endpoint: https://{args.bind}/ (self-signed: {cert})", flush=True)
    gunicorn = Path(sys.executable).with_name("gunicorn")
    os.execv(str(gunicorn), [  # noqa: S606 - fixed argv, no shell
        str(gunicorn), "cmdop_server.wsgi:application", "--bind", args.bind,
        "--workers", str(args.workers), "--certfile", str(cert), "--keyfile", str(key),
        "--config", "python:cmdop_server.devserver",
    ])
