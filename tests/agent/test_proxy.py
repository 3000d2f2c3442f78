"""HTTPS_PROXY / NO_PROXY: the agent tunnels through a corporate proxy with CONNECT."""

from __future__ import annotations

import select
import socket
import threading

import pytest

pytestmark = pytest.mark.integration


class ConnectProxy:
    """A tiny test-only CONNECT proxy that records the tunnels it opened."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(line)
        method, target, _ = line.split()
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection(("127.0.0.1" if host == "localhost" else host,
                                             int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        socks = [client, upstream]
        while True:
            ready, _, _ = select.select(socks, [], [], 30)
            if not ready:
                break
            for s in ready:
                data = s.recv(65536)
                if not data:
                    client.close()
                    upstream.close()
                    return
                (upstream if s is client else client).sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def proxy():
    p = ConnectProxy()
    yield p
    p.close()


def test_enroll_through_https_proxy(home, standin, proxy, monkeypatch) -> None:
    env = home.env()
    env["HTTPS_PROXY"] = f"http://127.0.0.1:{proxy.port}"
    env["NO_PROXY"] = "example.invalid"
    monkeypatch.setattr(home, "env", lambda: env)
    result = home.cli("enroll", "--token", "jt_good")
    assert result.returncode == 0, result.stderr
    assert [r.rsplit(" ", 1)[0] for r in proxy.requests] == [f"CONNECT localhost:{standin.port}"]


def test_no_proxy_bypasses_the_proxy(home, standin, proxy, monkeypatch) -> None:
    env = home.env()
    env["HTTPS_PROXY"] = f"http://127.0.0.1:{proxy.port}"
    env["NO_PROXY"] = "localhost"
    monkeypatch.setattr(home, "env", lambda: env)
    assert home.cli("enroll", "--token", "jt_good").returncode == 0
    assert proxy.requests == []
