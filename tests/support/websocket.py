"""The browser terminal's WebSocket as a browser opens it (tests and bench/terminal.py): one
TLS connection, the handshake with a session cookie and an Origin, then cmdop's own RFC
6455 client (``cmdop_agent.websocket``: masked frames out, messages in, pings answered, the
close handshake), so the browser's tests and cmdop's exercise one implementation.
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from cmdop_agent import websocket
from cmdop_agent.websocket import Closed

__all__ = ["Closed", "HandshakeRefused", "TerminalSocket"]


class HandshakeRefused(Exception):
    def __init__(self, status_line: str) -> None:
        super().__init__(status_line)
        self.status_line = status_line


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
        headers = {"Origin": origin or f"https://{parts.netloc}",
                   "Cookie": f"{cookie[0]}={cookie[1]}"}
        try:
            self.ws = websocket.WebSocket.handshake(ctx.wrap_socket(raw, server_hostname=host),
                                                    parts.netloc, parts.path, headers, timeout)
        except websocket.HandshakeRefused as exc:
            raise HandshakeRefused(f"HTTP/1.1 {exc.status}") from None
        self.sock = self.ws.sock

    def send_bytes(self, data: bytes) -> None:
        self.ws.send_binary(data)

    def send_json(self, message: dict) -> None:
        self.ws.send_json(message)

    def receive(self) -> bytes | dict:
        """The next data message: bytes (terminal output) or a dict (a JSON record).
        Raises Closed when the server closes."""
        message = self.ws.receive()
        return json.loads(message) if isinstance(message, str) else message

    def close(self) -> None:
        self.ws.close()
