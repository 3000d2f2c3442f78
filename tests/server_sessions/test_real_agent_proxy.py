"""HTTPS_PROXY / NO_PROXY: the real agent reaches the real control plane through a
corporate proxy with CONNECT (TLS end to end through the tunnel), or bypasses it."""

from __future__ import annotations

import select
import socket
import threading

import pytest
from cmdop_server.machines.models import Machine

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


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


def _through(agent, proxy, monkeypatch, no_proxy: str):
    env = agent.home.env()
    env["HTTPS_PROXY"] = f"http://127.0.0.1:{proxy.port}"
    env["NO_PROXY"] = no_proxy
    monkeypatch.setattr(agent.home, "env", lambda: env)


def test_enroll_and_run_through_https_proxy(control_plane, real_agent, proxy,
                                            monkeypatch) -> None:
    agent = real_agent(control_plane)
    _through(agent, proxy, monkeypatch, "example.invalid")
    result = agent.enroll()
    assert result.returncode == 0, result.stderr
    agent.start()  # heartbeats, polls and events all go through the tunnel
    sid, out = agent.open_session()
    agent.api.type(sid, b"echo via-proxy-$((2*3))\n")
    out.wait_for(b"via-proxy-6")
    tunnels = {r.rsplit(" ", 1)[0] for r in proxy.requests}
    assert tunnels == {f"CONNECT localhost:{control_plane.port}"}
    assert len(proxy.requests) >= 3  # enroll, then the agent's own connections


def test_no_proxy_bypasses_the_proxy(control_plane, real_agent, proxy, monkeypatch) -> None:
    agent = real_agent(control_plane)
    _through(agent, proxy, monkeypatch, "localhost")
    assert agent.enroll().returncode == 0
    assert Machine.objects.in_workspace(agent.ws).exists()
    assert proxy.requests == []
