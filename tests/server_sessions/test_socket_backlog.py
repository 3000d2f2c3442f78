"""The control plane's listening socket keeps room for a wave of connections while its
workers are busy, under our rendered gunicorn.conf.py (issue 19.2).

gunicorn's asgi worker hands the socket to asyncio's create_server, which listens on it
again with a backlog of 100: on a lab host, 2,000 agents reconnecting at once met nginx's
connect() failing with EAGAIN and got 502. Here the one worker is stopped (SIGSTOP) so
nothing is accepted, more connections than 100 are opened without blocking, and each must
be queued, then answered once the worker runs again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import pytest
from cmdop_install.render import load_for_render, render_host

from tests.support.control_plane import ControlPlane, until
from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.integration

WAVE = 400  # more than asyncio's 100, well below gunicorn's 2048 and this process's files
REQUEST = b"GET /api/agent/v1/work HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _rendered_gunicorn_conf(tmp_path: Path) -> Path:
    with key_env():
        site_dir = make_site(tmp_path / "site", {})
        site, inventory, secrets, pem = load_for_render(site_dir)
        files = render_host(site, inventory, "node1", secrets, pem)
    text = next(f.content for f in files if f.path.endswith("/gunicorn.conf.py")).decode()
    # the release folder it enters exists only on a deployed host (checked as it is read)
    chdir = next(line for line in text.splitlines() if line.startswith("chdir = "))
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(text.replace(chdir, f"chdir = {os.getcwd()!r}"))
    return conf


def _status_line(path: Path) -> bytes:
    """The first line of the answer to one request on a fresh connection."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(REQUEST)
        return _read_status(sock)


def _read_status(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\r\n")[0]


def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_wave_of_connections_waits_for_busy_workers(tls_pki, tmp_path):
    path = tmp_path / "gunicorn.sock"
    conf = _rendered_gunicorn_conf(tmp_path)
    plane = ControlPlane(tls_pki, tmp_path / "gunicorn.log", workers=1, unix_socket=path,
                         extra_args=("--config", str(conf)))
    with plane:
        assert plane.proc is not None
        # an answer proves the worker serves the socket: its create_server has listened
        assert until(lambda: _status_line(path).startswith(b"HTTP/1.1 "), timeout=30,
                     what="the worker's first answer")
        workers = _workers(plane.proc.pid)
        assert len(workers) == 1, workers
        wave: list[socket.socket] = []
        refused = 0
        os.kill(workers[0], signal.SIGSTOP)
        try:
            for _ in range(WAVE):
                sock = socket.socket(socket.AF_UNIX)
                sock.setblocking(False)
                try:
                    sock.connect(str(path))
                except BlockingIOError:  # the accept queue is full (nginx: 502)
                    refused += 1
                    sock.close()
                    continue
                wave.append(sock)
        finally:
            os.kill(workers[0], signal.SIGCONT)
        try:
            assert refused == 0, f"{refused} of {WAVE} connections refused: the queue is full"
            for sock in wave:
                sock.setblocking(True)
                sock.settimeout(30)
                sock.sendall(REQUEST)
            answers = [_read_status(sock) for sock in wave]
            assert all(a.startswith(b"HTTP/1.1 ") for a in answers), set(answers)
        finally:
            for sock in wave:
                with contextlib.suppress(OSError):
                    sock.close()
