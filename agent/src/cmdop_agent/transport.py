"""HTTPS to the control plane: the only module that opens network connections.

Outbound only: it connects, it never binds or listens. TLS 1.3 is the minimum, the server
certificate is verified against the site CA (or the system store) with the hostname checked.
``HTTPS_PROXY``/``NO_PROXY`` are honoured with an HTTP ``CONNECT`` tunnel; TLS then runs end
to end through the tunnel, so the proxy sees only the host name.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
from pathlib import Path
from urllib.parse import unquote, urlencode, urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

from . import __version__
from .errors import ServerError, TlsError, TransportError

# What a kept-alive connection that the server closed while it sat idle fails with.
_CLOSED_WHILE_IDLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                      ConnectionAbortedError, ssl.SSLEOFError)


def make_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ca_file is None:
        ctx.load_default_certs()
    else:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot load CA file {ca_file}: {exc}") from None
    return ctx


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a changed file apart: its mtime, size and inode (None: no file)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _proxy_for(host: str) -> tuple[str, int, dict[str, str]] | None:
    url = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if not url or proxy_bypass_environment(host):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise TransportError(f"HTTPS_PROXY must be an http:// proxy URL, got {parts.scheme}://")
    headers = {}
    if parts.username:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    return parts.hostname, parts.port or 3128, headers


def _describe(exc: BaseException, where: str, ca_file: Path | None) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        trust = f"the CA in {ca_file}" if ca_file else "the system trust store"
        return f"TLS: certificate of {where} is not trusted by {trust}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or str(exc)).upper()
        if any(k in reason for k in ("PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS")):
            return f"TLS: {where} does not offer TLS 1.3 (older TLS is refused)"
        return f"TLS handshake with {where} failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out talking to {where}"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot reach {where}: {reason}"


class HttpsClient:
    """One persistent HTTPS connection; not thread-safe (each thread has its own)."""

    def __init__(self, server: str, ca_file: Path | None, timeout: float = 30.0,
                 user_agent: str = f"cmdop-agent/{__version__}") -> None:
        parts = urlsplit(server)
        self.host = parts.hostname or ""
        self.port = parts.port or 443
        self.prefix = parts.path.rstrip("/")
        self.ca_file = ca_file
        self.timeout = timeout
        self.user_agent = user_agent
        self._ca_stamp = _stamp(ca_file)
        self._ctx = make_tls_context(ca_file)
        self._conn: http.client.HTTPSConnection | None = None

    def _context(self) -> ssl.SSLContext:
        """The TLS context, made anew when the CA file changed since it was read: a CA
        rotation replaces the file while the agent runs, and the next connection must trust
        what it says now. A file caught half-written stays unread until it changes again
        (the context before it keeps serving)."""
        stamp = _stamp(self.ca_file)
        if stamp != self._ca_stamp:
            try:
                self._ctx = make_tls_context(self.ca_file)
            except TransportError:
                return self._ctx
            self._ca_stamp = stamp
        return self._ctx

    def _connect(self, timeout: float) -> http.client.HTTPSConnection:
        proxy = _proxy_for(self.host)
        ctx = self._context()
        if proxy is None:
            conn = http.client.HTTPSConnection(self.host, self.port, context=ctx,
                                               timeout=timeout)
        else:
            phost, pport, headers = proxy
            conn = http.client.HTTPSConnection(phost, pport, context=ctx, timeout=timeout)
            conn.set_tunnel(self.host, self.port, headers=headers)
        conn.connect()
        # Keystrokes are tiny requests: do not let Nagle hold them for a delayed ACK.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _exchange(self, method: str, path: str, payload: bytes | None, headers: dict,
                  timeout: float) -> tuple[http.client.HTTPResponse, bytes]:
        if self._conn is None:
            self._conn = self._connect(timeout)
        assert self._conn.sock is not None
        self._conn.sock.settimeout(timeout)
        self._conn.request(method, self.prefix + path, body=payload, headers=headers)
        resp = self._conn.getresponse()
        return resp, resp.read()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def open_stream(self, timeout: float | None = None) -> ssl.SSLSocket:
        """A TLS connection of its own (tunnelled through the proxy as a request's), for a
        protocol that takes the socket over after its HTTP/1.1 handshake (websocket.py);
        the caller closes it."""
        try:
            conn = self._connect(timeout or self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            kind = TlsError if isinstance(exc, ssl.SSLError) else TransportError
            raise kind(_describe(exc, f"{self.host}:{self.port}", self.ca_file)) from None
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        conn.sock = None  # the socket is the caller's now: the connection must not close it
        return sock

    def request(
        self,
        method: str,
        path: str,
        *,
        body: dict | None = None,
        form: dict | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Send one request; return the JSON object of a 2xx or raise ServerError/TransportError."""
        data = self.request_json(method, path, body=body, form=form, token=token,
                                 timeout=timeout)
        return data if isinstance(data, dict) else {}

    def request_json(self, method: str, path: str, *, body: dict | None = None,
                     form: dict | None = None, token: str | None = None,
                     timeout: float | None = None) -> object:
        """The decoded JSON of a 2xx (an object or a list); errors as ``request``."""
        raw = self.request_bytes(method, path, body=body, form=form, token=token,
                                 timeout=timeout)
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def request_bytes(self, method: str, path: str, *, body: dict | None = None,
                      form: dict | None = None, token: str | None = None,
                      timeout: float | None = None) -> bytes:
        """The raw body of a 2xx (an export, say); errors as ``request``."""
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            payload = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        where = f"{self.host}:{self.port}"
        timeout = timeout or self.timeout
        reused = self._conn is not None
        try:
            try:
                resp, raw = self._exchange(method, path, payload, headers, timeout)
            except _CLOSED_WHILE_IDLE:
                if not reused:
                    raise
                # The kept-alive connection was closed by the server while we were idle
                # (its keep-alive timeout: gunicorn 2 s, nginx 75 s) and failed before any
                # reply. Once more on a new connection, at once: not a control-plane
                # failure worth a backoff. Repeating is safe for every agent request (events
                # carry seq, acks are idempotent, unacknowledged work is delivered again);
                # a token refresh never reuses a connection.
                self.close()
                resp, raw = self._exchange(method, path, payload, headers, timeout)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            kind = TlsError if isinstance(exc, ssl.SSLError) else TransportError
            raise kind(_describe(exc, where, self.ca_file)) from None
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        if 200 <= resp.status < 300:
            return raw
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        code = str(data.get("error") or "http_error")
        detail = str(data.get("detail") or data.get("error_description") or resp.reason)
        retry_after = resp.getheader("Retry-After") or ""
        raise ServerError(resp.status, code, " ".join(detail.split())[:300],
                          float(retry_after) if retry_after.isdigit() else None)
