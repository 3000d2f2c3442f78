"""cmdop's RFC 6455 client against a scripted peer on loopback TLS: what the real control
plane (tests/server_sessions/test_terminal_bearer.py) never does on its own — fragment a
message around a ping, send a 64-bit length, mask a frame, refuse the handshake as an older
control plane does — and what our frames look like on the wire."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cmdop_agent.client.settings import Settings
from cmdop_agent.client.userapi import Session, UserApi
from cmdop_agent.errors import TransportError
from cmdop_agent.websocket import Closed, HandshakeRefused, WebSocket

pytestmark = pytest.mark.unit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    n = len(payload)
    length = (struct.pack("!B", n) if n < 126 else struct.pack("!BH", 126, n) if n < 65536
              else struct.pack("!BQ", 127, n))
    first = (0x80 if fin else 0) | opcode
    if mask is None:
        return bytes([first]) + length + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([first, length[0] | 0x80]) + length[1:] + mask + masked


class Peer:
    """One scripted server connection: reads the handshake, then ``script(conn, head)``."""

    def __init__(self, cert: Path, key: Path,
                 script: Callable[[ssl.SSLSocket, dict[str, str]], None]) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://localhost:{self.listener.getsockname()[1]}"
        self.failure: BaseException | None = None
        self.received: list[tuple[int, bool, bytes]] = []

        def serve() -> None:
            try:
                raw, _ = self.listener.accept()
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.settimeout(10)
                    buffer = b""
                    while b"\r\n\r\n" not in buffer:
                        buffer += conn.recv(4096)
                    lines = buffer.split(b"\r\n\r\n")[0].decode().split("\r\n")
                    head = {k.strip().lower(): v.strip() for k, _, v in
                            (line.partition(":") for line in lines[1:])}
                    head[":request"] = lines[0]
                    script(conn, head)
            except BaseException as exc:  # noqa: BLE001 - reported by join()
                self.failure = exc

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def read_frame(self, conn: ssl.SSLSocket) -> None:
        """One client frame: (opcode, masked, unmasked payload) into ``received``."""
        def exact(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                assert chunk, "the client hung up mid-frame"
                data += chunk
            return data

        first, second = exact(2)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", exact(8))
        key = exact(4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(exact(n)))
        self.received.append((first & 0x0F, bool(second & 0x80), payload))

    def join(self) -> None:
        self.thread.join(10)
        self.listener.close()
        if self.failure is not None:
            raise self.failure


def upgrade(conn: ssl.SSLSocket, head: dict[str, str]) -> None:
    accept = base64.b64encode(hashlib.sha1(head["sec-websocket-key"].encode() + GUID,
                                           usedforsecurity=False).digest()).decode()
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n")


def session(url: str, ca: Path, tmp_path: Path) -> Session:
    settings = Settings(url, ca, "cmd_live_test", "ws1", tmp_path / "home")
    return Session(UserApi(settings, None), "s_1")


def test_fragments_pings_large_frames_and_the_close_handshake(pki, tmp_path) -> None:
    big = os.urandom(70_000)  # over 65535: the 64-bit length
    heads: list[dict[str, str]] = []

    def script(conn: ssl.SSLSocket, head: dict[str, str]) -> None:
        heads.append(head)
        upgrade(conn, head)
        conn.sendall(frame(0x1, b'{"type":', fin=False) + frame(0x9, b"are-you-there")
                     + frame(0x0, b'"status",', fin=False) + frame(0x0, b'"x":1}')
                     + frame(0x2, big))
        peer.read_frame(conn)  # the pong
        peer.read_frame(conn)  # the keys
        conn.sendall(frame(0x8, struct.pack("!H", 4000) + b"ended"))
        peer.read_frame(conn)  # the close answered

    peer = Peer(pki.cert, pki.key, script)
    ws = session(peer.url, pki.ca, tmp_path).terminal_socket()
    assert ws is not None
    assert json.loads(ws.receive()) == {"type": "status", "x": 1}
    assert ws.receive() == big
    ws.send_binary(b"echo hi\r")
    with pytest.raises(Closed) as closed:
        ws.receive()
    assert (closed.value.code, closed.value.reason) == (4000, "ended")
    ws.close()
    peer.join()
    assert heads[0][":request"] == "GET /w/ws1/sessions/s_1/terminal HTTP/1.1"
    assert heads[0]["authorization"] == "Bearer cmd_live_test"
    assert "origin" not in heads[0] and "cookie" not in heads[0]
    assert peer.received == [(0xA, True, b"are-you-there"), (0x2, True, b"echo hi\r"),
                             (0x8, True, struct.pack("!H", 4000))]


def test_an_older_control_plane_refuses_the_handshake_and_gets_requests(pki,
                                                                       tmp_path) -> None:
    """403 before the socket opens is how a route that takes only a browser's cookie answers
    a bearer: no socket (cmdop falls back to one request per key); 429 is a wait, not that."""
    def refuse(status: bytes, extra: bytes = b"", body: bytes = b"") -> Callable:
        def script(conn: ssl.SSLSocket, _head: dict[str, str]) -> None:
            conn.sendall(b"HTTP/1.1 " + status + b"\r\n" + extra
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        return script

    older = Peer(pki.cert, pki.key, refuse(b"403 Forbidden"))
    assert session(older.url, pki.ca, tmp_path).terminal_socket() is None
    older.join()
    busy = Peer(pki.cert, pki.key, refuse(
        b"429 Too Many Requests", b"Retry-After: 7\r\n",
        b'{"error": "rate_limited", "detail": "Too many requests."}'))
    with pytest.raises(HandshakeRefused) as refused:
        session(busy.url, pki.ca, tmp_path).terminal_socket()
    busy.join()
    assert (refused.value.status, refused.value.code, refused.value.retry_after) \
        == (429, "rate_limited", 7.0)
    assert refused.value.detail == "Too many requests."


def test_a_wrong_accept_key_or_a_masked_server_frame_is_refused(pki, tmp_path) -> None:
    def wrong_accept(conn: ssl.SSLSocket, _head: dict[str, str]) -> None:
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\n")

    peer = Peer(pki.cert, pki.key, wrong_accept)
    with pytest.raises(TransportError, match="not RFC 6455"):
        session(peer.url, pki.ca, tmp_path).terminal_socket()
    peer.join()

    def masked(conn: ssl.SSLSocket, head: dict[str, str]) -> None:
        upgrade(conn, head)
        conn.sendall(frame(0x2, b"x", mask=b"abcd"))
        peer.read_frame(conn)

    peer = Peer(pki.cert, pki.key, masked)
    ws = WebSocket.connect(session(peer.url, pki.ca, tmp_path).api.client, "/t", "tok")
    with pytest.raises(TransportError, match="masked"):
        ws.receive()
    ws.close()
    peer.join()
