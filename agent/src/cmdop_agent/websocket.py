"""RFC 6455, the client's side, on a connection transport.py opened: the handshake with a
bearer credential, masked frames out, fragmented messages reassembled, pings answered, the
close handshake. ``cmdop connect`` reads it in one loop with the keyboard: select on
``sock``, then ``fill`` (which also takes what TLS already decrypted) and drain ``messages``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import struct
from collections.abc import Iterator

from .errors import AgentError, ServerError, TransportError
from .transport import HttpsClient

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEAD = 64 * 1024
MAX_MESSAGE = 16 * 1024 * 1024  # the terminal sends at most a page of output per frame
CLOSE_WAIT = 5.0


class HandshakeRefused(ServerError):
    """The server answered the Upgrade with an HTTP status instead of 101."""


class Closed(AgentError):
    """The server closed the WebSocket (``code`` 1006: the connection was lost instead)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the terminal connection closed ({code} {reason})".rstrip())
        self.code, self.reason = code, reason


def accept_key(key: str) -> str:
    """The answer RFC 6455 fixes for our key: SHA-1 is the protocol's, and proves only that
    the server speaks WebSocket (TLS protects the connection)."""
    digest = hashlib.sha1(key.encode() + GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the repeated 4-byte key, as one big-integer operation (fast in CPython)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def _refusal(status: int, head: dict[str, str], body: bytes) -> HandshakeRefused:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    retry = head.get("retry-after", "")
    return HandshakeRefused(status, str(data.get("error") or "http_error"),
                            " ".join(str(data.get("detail") or "").split())[:300]
                            or f"the WebSocket handshake was answered with {status}",
                            float(retry) if retry.isdigit() else None)


class WebSocket:
    """One client WebSocket. Not thread-safe: one loop reads and writes it."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.fragment_opcode = 0
        self.close_sent = False

    @classmethod
    def connect(cls, client: HttpsClient, path: str, token: str,
                timeout: float = 30.0) -> WebSocket:
        """Open ``path`` on the client's server with ``Authorization: Bearer``; a non-101
        answer raises HandshakeRefused with the server's status, error code and detail."""
        sock = client.open_stream(timeout)
        host = client.host if client.port == 443 else f"{client.host}:{client.port}"
        return cls.handshake(sock, host, client.prefix + path,
                             {"Authorization": f"Bearer {token}",
                              "User-Agent": client.user_agent}, timeout)

    @classmethod
    def handshake(cls, sock: ssl.SSLSocket, host: str, path: str, headers: dict[str, str],
                  timeout: float = 30.0) -> WebSocket:
        """The opening handshake on a TLS connection already open (closed if it fails)."""
        try:
            sock.settimeout(timeout)
            key = base64.b64encode(os.urandom(16)).decode()
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                       f"{extra}\r\n")
            sock.sendall(request.encode())
            ws = cls(sock)
            status, head = ws._read_head()
            if status != 101:
                raise _refusal(status, head, ws._read_body(head))
            if (head.get("upgrade", "").lower() != "websocket"
                    or head.get("sec-websocket-accept") != accept_key(key)):
                raise TransportError("the server's WebSocket handshake answer is not RFC 6455")
            return ws
        except BaseException:
            sock.close()
            raise

    def _read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise TransportError("the server's WebSocket handshake answer is too long")
            self._recv()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise TransportError(f"not an HTTP answer to the WebSocket handshake: {lines[0]!r}")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        return int(parts[1]), fields

    def _read_body(self, head: dict[str, str]) -> bytes:
        length = head.get("content-length", "")
        want = min(int(length), MAX_HEAD) if length.isdigit() else 0
        try:
            while len(self.buffer) < want:
                self._recv()
        except (Closed, OSError):
            pass  # the status is the answer; a body cut short only loses its detail
        return bytes(self.buffer[:want])

    def _recv(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ssl.SSLError as exc:
            raise Closed(1006, f"TLS: {exc.reason or exc}") from None
        except OSError as exc:
            raise Closed(1006, exc.strerror or str(exc)) from None
        if not chunk:
            raise Closed(1006, "connection lost")
        self.buffer += chunk

    def fill(self) -> None:
        """Read what the connection has (blocks until at least one byte)."""
        self._recv()
        while self.sock.pending():
            self._recv()

    def _frame(self) -> tuple[bool, int, bytes] | None:
        """The next whole frame in the buffer, or None."""
        if len(self.buffer) < 2:
            return None
        first, second = self.buffer[0], self.buffer[1]
        if first & 0x70:
            raise TransportError("the server sent a WebSocket frame with reserved bits set")
        if second & 0x80:
            raise TransportError("the server sent a masked WebSocket frame (RFC 6455 5.1)")
        n, at = second & 0x7F, 2
        if n == 126:
            if len(self.buffer) < 4:
                return None
            (n,), at = struct.unpack_from("!H", self.buffer, 2), 4
        elif n == 127:
            if len(self.buffer) < 10:
                return None
            (n,), at = struct.unpack_from("!Q", self.buffer, 2), 10
        if n > MAX_MESSAGE:
            raise TransportError(f"the server sent a WebSocket frame of {n} bytes")
        if len(self.buffer) < at + n:
            return None
        payload = bytes(self.buffer[at:at + n])
        del self.buffer[:at + n]
        return bool(first & 0x80), first & 0x0F, payload

    def messages(self) -> Iterator[bytes | str]:
        """The data messages whole in the buffer (bytes for binary, str for text); pings are
        answered on the way; a close is answered and raised as Closed."""
        while (frame := self._frame()) is not None:
            fin, opcode, payload = frame
            if opcode == PING:
                self.send_frame(PONG, payload)
            elif opcode == PONG:
                continue
            elif opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if not self.close_sent:
                    self.send_frame(CLOSE, payload[:2])
                    self.close_sent = True
                raise Closed(code, payload[2:].decode(errors="replace"))
            elif opcode in (TEXT, BINARY, CONTINUATION):
                if (opcode == CONTINUATION) != bool(self.fragments):
                    raise TransportError("the server interleaved WebSocket messages")
                if opcode != CONTINUATION:
                    self.fragment_opcode = opcode
                self.fragments.append(payload)
                if sum(map(len, self.fragments)) > MAX_MESSAGE:
                    raise TransportError("the server sent a WebSocket message over 16 MiB")
                if fin:
                    data, self.fragments = b"".join(self.fragments), []
                    yield data.decode() if self.fragment_opcode == TEXT else data
            else:
                raise TransportError(f"the server sent an unknown WebSocket opcode {opcode}")

    def receive(self) -> bytes | str:
        """The next data message, waiting for it."""
        while True:
            for message in self.messages():
                return message
            self.fill()

    def send_frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)  # every client frame is masked with a fresh key (5.3)
        try:
            self.sock.sendall(header + key + _mask(payload, key))
        except OSError as exc:
            raise Closed(1006, exc.strerror or str(exc)) from None

    def send_binary(self, data: bytes) -> None:
        self.send_frame(BINARY, data)

    def send_json(self, message: dict) -> None:
        self.send_frame(TEXT, json.dumps(message, separators=(",", ":")).encode())

    def close(self, code: int = 1000) -> None:
        """The close handshake from our side: send ours, wait (bounded) for the server's."""
        try:
            if not self.close_sent:
                self.close_sent = True
                self.send_frame(CLOSE, struct.pack("!H", code))
                self.sock.settimeout(CLOSE_WAIT)
                while True:
                    for _ in self.messages():
                        pass
                    self.fill()
        except (Closed, TransportError, OSError):
            pass
        finally:
            self.sock.close()
