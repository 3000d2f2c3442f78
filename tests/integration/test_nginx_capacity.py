"""Our rendered nginx (main nginx.conf, site file, the drop-in's open-file limit) holds more
connections than Debian's defaults let it: 768 per worker, 1,024 open files per process.

Each agent's long-poll is two nginx connections (the agent's and the one to gunicorn), so a
fleet of thousands needs nginx's own limits raised. One process here holds 2,500 TLS
connections at once (more than Debian's two workers could take together) and gets an answer
on every one of them while all are open.
"""

from __future__ import annotations

import http.client
import os
import resource
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.nginx import NGINX, Nginx
from tests.support.services import free_port
from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.integration

CONNECTIONS = 2500


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (scripts/bootstrap.sh installs it)")
    root = Path(tempfile.mkdtemp(prefix="cmdop-nginx-capacity-"))
    with key_env():
        site_dir = make_site(tmp_path_factory.mktemp("site"), {
            "control_plane.https_port": free_port(), "control_plane.http_port": free_port()})
        server = Nginx(root, site_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def open_files():
    """This process may open CONNECTIONS sockets and its usual files (restored after)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = CONNECTIONS + 512
    hard = before[1] if before[1] >= need or os.geteuid() != 0 else need
    if hard < need:
        pytest.skip(f"the open-file hard limit {hard} is below {need} and we are not root")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(before[0], need), max(hard, before[1])))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_rendered_limits_cover_the_connections():
    """The drop-in's LimitNOFILE leaves room for twice nginx.conf's worker_connections."""
    from cmdop_install.render import NGINX_WORKER_CONNECTIONS

    assert NGINX_WORKER_CONNECTIONS >= 2 * 5000 + 1000, "5,000 agents' long-polls and people"
    root = Path(tempfile.mkdtemp(prefix="cmdop-nginx-limits-"))
    try:
        with key_env():
            site_dir = make_site(root / "site", {})
            server = Nginx(root / "r", site_dir)
        conf = (root / "r/etc/nginx/nginx.conf").read_text()
        assert f"worker_connections {NGINX_WORKER_CONNECTIONS};" in conf
        assert server.limit_nofile() > 2 * NGINX_WORKER_CONNECTIONS
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_holds_thousands_of_tls_connections_at_once(nginx, open_files):
    held: list[http.client.HTTPSConnection] = []
    try:
        # each handshake completes only once a worker has accepted the connection and
        # taken it on; none is closed before all are open
        for _ in range(CONNECTIONS):
            held.append(nginx.connect(timeout=30))
        statuses = []
        for conn in held:
            # nginx answers /metrics to a source not listed itself (deny all): no app needed
            conn.request("GET", "/metrics", headers={"Host": nginx.domain})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        assert statuses == [403] * CONNECTIONS
    finally:
        for conn in held:
            conn.close()
