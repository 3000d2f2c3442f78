"""The agent trusts what its CA file says now: a CA rotation replaces the file while the
agent runs, and its next connection must trust the new CA without a restart.

A real TLS 1.3 server on loopback presents a certificate from one CA, then from another;
one HttpsClient (the agent's) meets both, its CA file rewritten in between."""

from __future__ import annotations

import http.server
import ipaddress
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cmdop_agent.errors import TlsError
from cmdop_agent.transport import HttpsClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

pytestmark = pytest.mark.integration


def _cert(subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=1)))
    if issuer is None:  # a CA
        builder = builder.issuer_name(name).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True)
        return builder.sign(key, hashes.SHA256()), key
    builder = builder.issuer_name(issuer[0].subject).add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        critical=False)
    return builder.sign(issuer[1], hashes.SHA256()), key


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path):
    """A TLS server whose certificate ``serve(leaf)`` replaces (new connections only)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    contexts: list[ssl.SSLContext] = []

    def serve(leaf) -> None:
        crt, key = tmp_path / "srv.crt", tmp_path / "srv.key"
        crt.write_bytes(_pem(leaf[0]))
        key.write_bytes(leaf[1].private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        contexts.append(ctx)

    def get_request():
        sock, address = httpd.socket.accept()
        return contexts[-1].wrap_socket(sock, server_side=True), address

    httpd.get_request = get_request  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], serve
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_a_rewritten_ca_file_is_trusted_from_the_next_connection(tmp_path: Path,
                                                                 server) -> None:
    port, serve = server
    old_ca, new_ca = _cert("old CA", None), _cert("new CA", None)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(_pem(old_ca[0]))
    serve(_cert("server", old_ca))
    client = HttpsClient(f"https://127.0.0.1:{port}", ca_file)
    assert client.request("GET", "/") == {}

    # the admitted phase: both CAs in the file; then the server's certificate from the new
    client.close()
    ca_file.write_bytes(_pem(old_ca[0]) + _pem(new_ca[0]))
    serve(_cert("server", new_ca))
    assert client.request("GET", "/") == {}

    # retired: the new CA alone; a server still on the old CA is refused
    client.close()
    ca_file.write_bytes(_pem(new_ca[0]))
    serve(_cert("server", old_ca))
    with pytest.raises(TlsError, match="not trusted"):
        client.request("GET", "/")


def test_an_unreadable_ca_file_keeps_the_trust_read_before(tmp_path: Path, server) -> None:
    port, serve = server
    ca = _cert("CA", None)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(_pem(ca[0]))
    serve(_cert("server", ca))
    client = HttpsClient(f"https://127.0.0.1:{port}", ca_file)
    assert client.request("GET", "/") == {}
    client.close()
    # caught half-written: the context read before serves until the file is whole again
    ca_file.write_bytes(_pem(ca[0])[:200])
    assert client.request("GET", "/") == {}
