"""A small RFC 6455 client for the browser terminal's WebSocket (tests and bench/terminal.py).

The workspace has no WebSocket library and needs only this: one TLS connection, the
handshake with a session cookie and an Origin as a browser sends them, masked frames out,
unmasked frames in (text, binary, close; pings answered).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeRefused(Exception):
    def __init__(self, status_line: str) -> None:
        super().__init__(status_line)
        self.status_line = status_line


@dataclass
class Closed(Exception):
    code: int
    reason: str


class TerminalSocket:
    """``TerminalSocket(url, ca, cookie=(name, value), origin=...)``; ``url`` is https://…"""

    def __init__(self, url: str, ca: Path | None, cookie: tuple[str, str],
                 origin: str | None = None, timeout: float = 30,
                 connect_to: tuple[str, int] | None = None) -> None:
        """``connect_to``: the address to dial when ``url``'s name does not resolve (a
        site's public name served by nginx on loopback); SNI and Host stay ``url``'s."""
        parts = urlsplit(url)
        host, port = parts.hostname or "localhost", parts.port or 443
        raw = socket.create_connection(connect_to or (host, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        origin = origin or f"https://{parts.netloc}"
        request = (f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Origin: {origin}\r\nCookie: {cookie[0]}={cookie[1]}\r\n\r\n")
        self.sock.sendall(request.encode())
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status + " ":
            raise HandshakeRefused(status)

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed(1006, "connection lost")
        self.buffer += chunk

    def _exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_bytes(self, data: bytes) -> None:
        self.send_frame(BINARY, data)

    def send_json(self, message: dict) -> None:
        self.send_frame(TEXT, json.dumps(message).encode())

    def receive(self) -> bytes | dict:
        """The next data message: bytes (terminal output) or a dict (a JSON record).
        Raises Closed when the server closes."""
        while True:
            first, second = self._exact(2)
            opcode, n = first & 0x0F, second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._exact(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._exact(8))
            payload = self._exact(n)
            if opcode == BINARY:
                return payload
            if opcode == TEXT:
                return json.loads(payload)
            if opcode == PING:
                self.send_frame(PONG, payload)
            elif opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise Closed(code, payload[2:].decode(errors="replace"))

    def close(self) -> None:
        try:
            self.send_frame(CLOSE, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()
