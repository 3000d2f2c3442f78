"""The real control plane for end-to-end tests and bench/pty.py.

``ControlPlane`` runs cmdop_server under gunicorn's ``asgi`` worker over TLS on a loopback
port (certificates from ``make_pki``, a throwaway CA), in a process group of its own so
``kill()`` can SIGKILL master and workers at once, as a crash would, and ``start()`` brings
it back on the same port. ``UserApi`` is the user API as one member calls it (an API key,
one keep-alive connection); ``SessionOutput`` follows a session's output through the cursor
API. Databases and Redis come from the caller (tests/server/conftest.py, or the bench's own
daemons from tests/support/services.py) through the ``CMDOP_TEST_*`` environment variables
that ``cmdop_server.settings.test`` reads.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support.services import free_port, wait_for_port

__all__ = ["ApiError", "ControlPlane", "Pki", "SessionOutput", "UserApi", "make_pki", "until"]

T = TypeVar("T")


def until(predicate: Callable[[], T], timeout: float = 20.0, what: str = "",
          interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path, host: str = "localhost") -> Pki:
    """A throwaway CA and a leaf for ``host`` in ``directory`` (ca.pem, leaf.crt, leaf.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()),
                        ec.generate_private_key(ec.SECP256R1()))
    ca = (x509.CertificateBuilder().subject_name(name("test-ca")).issuer_name(name("test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.pem", directory / "leaf.crt", directory / "leaf.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    pki.key.chmod(0o600)
    return pki


class ControlPlane:
    """``gunicorn -k asgi cmdop_server.asgi:application`` over TLS on 127.0.0.1.

    ``settings`` is the Django settings module; ``env`` adds variables (CMDOP_TEST_* ports,
    PYTHONPATH for a settings module of the caller's). The log goes to ``log_path``. With
    ``unix_socket`` it listens there instead, without TLS, as a deployed site's gunicorn
    does behind nginx (the socket is made 0666 for an nginx running as another user).
    """

    def __init__(self, pki: Pki, log_path: Path, settings: str = "cmdop_server.settings.test",
                 env: dict[str, str] | None = None, workers: int = 1,
                 extra_args: tuple[str, ...] = (), unix_socket: Path | None = None) -> None:
        self.pki = pki
        self.log_path = log_path
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings, **(env or {})}
        self.workers = workers
        self.extra_args = extra_args
        self.unix_socket = unix_socket
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def start(self) -> None:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        listen = (["-b", f"unix:{self.unix_socket}", "--umask", "0"] if self.unix_socket else
                  ["-b", f"127.0.0.1:{self.port}", "--certfile", str(self.pki.cert),
                   "--keyfile", str(self.pki.key)])
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(gunicorn), "cmdop_server.asgi:application", "-k", "asgi",
                 "-w", str(self.workers), *listen, "--log-level", "warning",
                 *self.extra_args],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)  # its own process group: master and workers
        try:
            if self.unix_socket:
                until(lambda: self.proc.poll() is not None or _accepts_unix(self.unix_socket),
                      timeout=30, what="gunicorn's unix socket")
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with {self.proc.returncode}")
            else:
                wait_for_port("127.0.0.1", self.port, self.proc, timeout=30)
        except (RuntimeError, TimeoutError, AssertionError) as exc:
            self.stop()
            raise RuntimeError(f"gunicorn did not start: {exc}\n{self.log()}") from None

    def kill(self) -> None:
        """kill -9 of master and workers together; returns once nothing listens any more."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        self.proc = None
        until(lambda: not _accepts("127.0.0.1", self.port), timeout=15,
              what="the killed control plane's port to close")

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the master), SIGKILL to the group if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # workers outlive a master that died abruptly only until they notice; be sure
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _accepts_unix(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ApiError(Exception):
    """A non-2xx answer: ``status`` and the JSON body."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(f"{status} {body}")
        self.status, self.body = status, body


class UserApi:
    """The user API under /api/v1/workspaces/<slug>/ as the holder of one API key.

    One keep-alive TLS connection (a browser or CLI keeps theirs; a handshake per keystroke
    would dominate the bench). A request is never retried: a POST whose reply is lost may
    have been carried out, and tests count what was accepted. A connection idle longer than
    gunicorn's keep-alive (2 s) is replaced before it is used, since the server may be
    closing it at that very moment.
    """

    IDLE_REUSE = 1.5

    def __init__(self, server: str, ca: Path, key: str, slug: str,
                 connect_to: str | None = None) -> None:
        """``connect_to``: the address to dial when ``server``'s name does not resolve here
        (a lab site's); TLS and Host still use the name."""
        self.host, _, port = server.removeprefix("https://").partition(":")
        self.port = int(port or 443)
        self.connect_to = connect_to
        self.key = key
        self.base = f"/api/v1/workspaces/{slug}"
        self._ctx = ssl.create_default_context(cafile=str(ca))
        self._conn: http.client.HTTPSConnection | None = None
        self._used = 0.0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def answer_status(self, method: str, path: str, body: dict | None = None) -> int:
        """The HTTP status of one call (200 for any 2xx), the connection closed after it:
        for load tests that count answers."""
        try:
            self.call(method, path, body)
            return 200
        except ApiError as exc:
            return exc.status
        finally:
            self.close()

    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float = 40) -> dict:
        """``path`` is below the workspace; returns the JSON body or raises ApiError, or
        OSError / http.client.HTTPException when the control plane cannot be reached."""
        if self._conn is not None and time.monotonic() - self._used > self.IDLE_REUSE:
            self.close()
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self.host, self.port, context=self._ctx,
                                                     timeout=timeout)
            if self.connect_to:
                raw = socket.create_connection((self.connect_to, self.port), timeout)
                self._conn.sock = self._ctx.wrap_socket(raw, server_hostname=self.host)
            else:
                self._conn.connect()
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conn.sock.settimeout(timeout)
        payload = json.dumps(body).encode() if body is not None else None
        try:
            self._conn.request(method, self.base + path, body=payload,
                               headers={"Authorization": f"Bearer {self.key}",
                                        "Content-Type": "application/json"})
            resp = self._conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        self._used = time.monotonic()
        data = json.loads(raw) if raw else {}
        if not 200 <= resp.status < 300:
            raise ApiError(resp.status, data)
        return data

    # the session operations tests and the bench use
    def open_session(self, machine_id: str, cols: int = 80, rows: int = 24) -> str:
        return self.call("POST", "/sessions", {"machine_id": machine_id, "cols": cols,
                                               "rows": rows})["session_id"]

    def type(self, session_id: str, data: bytes) -> str:
        return self.call("POST", f"/sessions/{session_id}/input",
                         {"data_b64": base64.b64encode(data).decode()})["work_id"]

    def resize(self, session_id: str, cols: int, rows: int) -> str:
        return self.call("POST", f"/sessions/{session_id}/resize",
                         {"cols": cols, "rows": rows})["work_id"]

    def command(self, session_id: str, command: str, **extra) -> str:
        return self.call("POST", f"/sessions/{session_id}/commands",
                         {"command": command, **extra})["work_id"]

    def read_file(self, session_id: str, path: str) -> str:
        return self.call("POST", f"/sessions/{session_id}/files/read", {"path": path})["work_id"]

    def write_file(self, session_id: str, path: str, data: bytes) -> str:
        return self.call("POST", f"/sessions/{session_id}/files/write",
                         {"path": path, "data_b64": base64.b64encode(data).decode()})["work_id"]

    def status(self, session_id: str) -> str:
        return self.call("GET", f"/sessions/{session_id}")["status"]


class SessionOutput:
    """A session's output through the cursor API: terminal bytes in ``data``, result and
    status records in ``records``, ``dropped`` markers counted."""

    def __init__(self, api: UserApi, session_id: str) -> None:
        self.api, self.session_id = api, session_id
        self.cursor = ""
        self.data = bytearray()
        self.records: list[dict] = []
        self.dropped = 0

    def read(self, wait: float = 5) -> int:
        """One page (long-polling up to ``wait`` s); returns how many items it held."""
        query = f"?wait={wait:g}" + (f"&cursor={self.cursor}" if self.cursor else "")
        page = self.api.call("GET", f"/sessions/{self.session_id}/output{query}",
                             timeout=wait + 30)
        self.cursor = page["cursor"]
        for item in page["items"]:
            if item["type"] == "output":
                self.data += base64.b64decode(item["data_b64"])
            elif item["type"] == "dropped":
                self.dropped += 1
            else:
                self.records.append(item)
        return len(page["items"])

    def wait_for(self, needle: bytes, timeout: float = 30, start: int = 0) -> bytes:
        """Read until ``needle`` is in the output (after offset ``start``); return it all."""
        deadline = time.monotonic() + timeout
        while needle not in self.data[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not in output {bytes(self.data[-400:])!r}")
            self.read(wait=min(5, max(left, 0.1)))
        return bytes(self.data)

    def wait_record(self, kind: str, timeout: float = 30, **match) -> dict:
        """The first record of ``kind`` whose fields include ``match``."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records:
                if record["type"] == kind and all(record.get(k) == v for k, v in match.items()):
                    return record
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} {match} in {self.records[-5:]}")
            self.read(wait=min(5, max(left, 0.1)))
