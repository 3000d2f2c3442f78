"""TEST-ONLY stand-in for the control plane's agent endpoints (docs/agent-protocol.md).

Everything the real control plane does is tested against it (tests/server_sessions/
test_real_agent*.py: sessions, commands, files, resize, enrollment, the device flow,
refresh, a proxy, kill -9 of gunicorn and Redis). This small HTTPS server remains for what
the real one cannot be made to do, on purpose or at all:

- offer only TLS 1.2, or a certificate for another host (tests/agent/test_cli_refusals.py);
- misbehave: answer 503 to every event batch (stall), store a batch and then lose the
  reply, deliver an acknowledged work item again, refuse one event type with 422
  (tests/agent/test_e2e.py);
- script RFC 8628 replies (authorization_pending, slow_down) without real-time intervals
  (tests/agent/test_login_and_tokens.py).

It implements the protocol's shapes (TLS 1.3, long-poll, seq numbers, acks, device flow,
error bodies) and nothing else: no database, no authorization model.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


# --- a throwaway PKI -------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path, cn: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_leaf(directory: Path, ca_key, ca_cert, host: str = "localhost") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{host}.crt", directory / f"{host}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --- the stand-in ----------------------------------------------------------------------------
@dataclass
class State:
    join_tokens: set[str] = field(default_factory=set)
    credentials: dict[str, str] = field(default_factory=dict)  # bearer -> machine id
    work: list[dict] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    delivered: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)  # accepted, deduplicated
    duplicate_events: int = 0
    high_seq: dict[str, int] = field(default_factory=dict)  # boot_id -> accepted through
    heartbeats: list[dict] = field(default_factory=list)
    # fault injection
    lose_events_replies: int = 0  # store the batch, then answer 503 (a "lost" reply)
    stall_events: bool = False  # answer 503 to every events POST (nothing drains)
    refuse_event_type: str | None = None  # answer 422 to any batch holding this event type
    # device flow
    device_pending: int = 2
    device_slow_down: bool = True


class StandIn:
    def __init__(self, cert: Path, key: Path, tls_max: ssl.TLSVersion | None = None) -> None:
        self.state = State()
        self.cond = threading.Condition()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if tls_max is not None:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.maximum_version = tls_max
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        standin = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = self.socket.accept()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def handle_error(self, request, client_address):  # handshake failures are expected
                pass

        class Handler(_Handler):
            pass

        Handler.standin = standin
        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"https://localhost:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # helpers for tests
    def push(self, type_: str, session_id: str | None = None, **payload) -> str:
        with self.cond:
            work_id = f"w_{len(self.state.work) + 1:04d}"
            self.state.work.append({"id": work_id, "type": type_, "session_id": session_id,
                                    "payload": payload})
            self.cond.notify_all()
            return work_id

    def redeliver(self, work_id: str) -> None:
        """Queue an already delivered (and acked) item again, as a confused server might."""
        with self.cond:
            item = next(i for i in self.state.work if i["id"] == work_id)
            self.state.acked.discard(work_id)
            self.state.work.append(item)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0):
        """Wait until predicate(events) returns something truthy; return it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = predicate(self.state.events)
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; events: {self.state.events[-5:]}")
                self.cond.wait(min(left, 0.05))

    def event(self, type_: str, timeout: float = 30.0, **match) -> dict:
        def find(events):
            for e in events:
                if e["type"] == type_ and all(e.get(k) == v for k, v in match.items()):
                    return e
            return None
        return self.wait_for(find, timeout)

    def output(self, session_id: str) -> bytes:
        with self.cond:
            return b"".join(base64.b64decode(e["data_b64"]) for e in self.state.events
                            if e["type"] == "session.output" and e["session_id"] == session_id)

    def wait_output(self, session_id: str, needle: bytes, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output(session_id)
            if needle in out:
                return out
            with self.cond:
                self.cond.wait(0.05)
        raise AssertionError(f"{needle!r} not in output {self.output(session_id)[-400:]!r}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    standin: StandIn

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str, detail: str) -> None:
        self._reply(status, {"error": code, "detail": detail})

    def _body(self) -> dict:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        return json.loads(raw) if raw else {}

    def _machine(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        with self.standin.cond:
            return self.standin.state.credentials.get(token)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self._body() if method == "POST" else {}
        st = self.standin.state
        if url.path == "/api/v1/oauth/device_authorization":
            return self._reply(200, {"device_code": "dc_1", "user_code": "WDJB-MJHT",
                                     "verification_uri": f"{self.standin.url}/device",
                                     "verification_uri_complete":
                                         f"{self.standin.url}/device?user_code=WDJB-MJHT",
                                     "expires_in": 60, "interval": 0.05})
        if url.path == "/api/v1/oauth/token":
            return self._token(body)
        if url.path == "/api/agent/v1/enroll":
            return self._enroll(body)
        machine = self._machine()
        if machine is None:
            return self._error(401, "unauthorized", "missing, invalid or expired credential")
        if url.path == "/api/agent/v1/heartbeat":
            with self.standin.cond:
                st.heartbeats.append(body)
            return self._reply(200, {"server_time": time.time(), "heartbeat_interval": 0.5})
        if url.path == "/api/agent/v1/work" and method == "GET":
            return self._work(parse_qs(url.query))
        if url.path == "/api/agent/v1/work/ack":
            with self.standin.cond:
                st.acked.update(body["ids"])
            return self._reply(200, {"acked": len(body["ids"])})
        if url.path == "/api/agent/v1/events":
            return self._events(body)
        return self._error(404, "not_found", f"no endpoint {url.path}")

    def _token(self, body: dict) -> None:
        st = self.standin.state
        with self.standin.cond:
            if st.device_slow_down:
                st.device_slow_down = False
                return self._reply(400, {"error": "slow_down"})
            if st.device_pending > 0:
                st.device_pending -= 1
                return self._reply(400, {"error": "authorization_pending"})
            return self._issue_tokens()

    def _issue_tokens(self) -> None:
        st = self.standin.state
        access = "at_" + secrets.token_hex(8)
        st.credentials[access] = "m_oauth"
        self._reply(200, {"access_token": access, "token_type": "Bearer",
                          "expires_in": 3600, "refresh_token": "rt_secret",
                          "scope": "agent"})

    def _enroll(self, body: dict) -> None:
        st = self.standin.state
        with self.standin.cond:
            if "join_token" not in body:
                if self._machine() is None:
                    return self._error(401, "unauthorized", "no valid access token")
                return self._reply(201, {"machine_id": "m_oauth", "workspace": "acme",
                                         "heartbeat_interval": 30, "poll_timeout": 25})
            if body["join_token"] not in st.join_tokens:
                return self._error(401, "join_token_invalid", "unknown or revoked join token")
            credential = "mc_" + secrets.token_hex(16)
            st.credentials[credential] = f"m_{body['hostname']}"
            return self._reply(201, {"machine_id": f"m_{body['hostname']}",
                                     "credential": credential, "workspace": "acme",
                                     "heartbeat_interval": 30, "poll_timeout": 25})

    def _work(self, query: dict) -> None:
        st = self.standin.state
        cursor = int(query.get("cursor", ["0"])[0])
        wait = min(float(query.get("wait", ["25"])[0]), 25)
        with self.standin.cond:
            self.standin.cond.wait_for(lambda: len(st.work) > cursor, timeout=wait)
            items = [i for i in st.work[cursor:] if i["id"] not in st.acked]
            st.delivered.extend(i["id"] for i in items)
            new_cursor = len(st.work)
        self._reply(200, {"items": items, "cursor": str(new_cursor)})

    def _events(self, body: dict) -> None:
        st = self.standin.state
        boot = body["boot_id"]
        with self.standin.cond:
            if st.stall_events:
                return self._error(503, "unavailable", "stand-in is stalling events")
            if any(e["type"] == st.refuse_event_type for e in body["events"]):
                return self._error(422, "bad_request", "stand-in refuses this event type")
            high = st.high_seq.get(boot, 0)
            for event in body["events"]:
                if event["seq"] <= high:
                    st.duplicate_events += 1
                    continue
                if event["seq"] != high + 1:
                    return self._error(400, "bad_request", "gap in event sequence")
                high = event["seq"]
                st.events.append(event)
            st.high_seq[boot] = high
            self.standin.cond.notify_all()
            if st.lose_events_replies > 0:
                st.lose_events_replies -= 1
                return self._error(503, "unavailable", "stand-in lost this reply")
        self._reply(200, {"accepted_through": high})
