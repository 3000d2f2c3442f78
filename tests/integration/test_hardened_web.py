"""nginx with our rendered site file and certificate; our systemd units' sandbox scores.

nginx runs our ``conf.d/cmdop.conf`` (rendered with ``root=<scratch>``) inside our rendered
main nginx.conf, proxying to a dummy app on the unix socket path gunicorn would use.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from cmdop_install.render import load_for_render, render_host

from tests.support.nginx import NGINX, Nginx
from tests.support.services import free_port
from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.integration



# the browser headers the real app sends (cmdop_server: SecurityMiddleware, CSP middleware)
APP_HEADERS = {"Strict-Transport-Security": "max-age=31536000; includeSubDomains",
               "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}


class _App(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        body = b"dummy app\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        for name, value in APP_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def log_message(self, *args):
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("127.0.0.1", 0)  # BaseHTTPRequestHandler wants an address tuple


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (scripts/bootstrap.sh installs it)")
    # not under pytest's 0700 tmp: nginx (unprivileged) must reach the app socket
    root = Path(tempfile.mkdtemp(prefix="cmdop-nginx-"))
    https_port, http_port = free_port(), free_port()
    with key_env():
        site_dir = make_site(tmp_path_factory.mktemp("site"), {
            "control_plane.https_port": https_port, "control_plane.http_port": http_port})
        server = Nginx(root, site_dir)  # our rendered site file; `nginx -t` before it runs
    app = _UnixHTTPServer(str(server.app_socket), _App)
    server.app_socket.chmod(0o666)  # nginx runs as another user here
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        server.start()
        yield {"https": https_port, "http": http_port, "ca": server.ca, "domain": server.domain}
    finally:
        server.stop()
        app.shutdown()
        app.server_close()
        shutil.rmtree(root, ignore_errors=True)


def _get(web, path="/", max_version=None, method="GET", body=None, headers=None):
    ctx = ssl.create_default_context(cafile=str(web["ca"]))
    if max_version:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = max_version
    conn = http.client.HTTPSConnection("127.0.0.1", web["https"], context=ctx, timeout=5)
    conn._tunnel_host = None
    # SNI and certificate check against the public name, connecting to loopback
    conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", web["https"]), 5),
                                server_hostname=web["domain"])
    version = conn.sock.version()
    conn.request(method, path, body=body, headers={"Host": web["domain"], **(headers or {})})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, version, body


def test_nginx_tls13_proxies_to_app_with_its_headers_once(nginx):
    response, version, body = _get(nginx)
    assert version == "TLSv1.3"
    assert response.status == 200 and body == b"dummy app\n"
    # the app is the one sender: nginx adds no second, conflicting copy
    for name, value in APP_HEADERS.items():
        assert response.headers.get_all(name) == [value], name
    assert "nginx/" not in (response.getheader("Server") or "")


def test_nginx_refuses_tls12(nginx):
    with pytest.raises(ssl.SSLError):
        _get(nginx, max_version=ssl.TLSVersion.TLSv1_2)


def _plain(web, host: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", web["http"], timeout=5)
    conn.request("GET", "/api/v1/me?x=1", headers={"Host": host})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_nginx_plain_http_only_redirects_to_the_configured_name(nginx):
    for host in (nginx["domain"], "evil.invalid"):
        response = _plain(nginx, host)
        assert response.status == 301
        # never to a name the client chose
        assert response.getheader("Location") == f"https://{nginx['domain']}/api/v1/me?x=1"
        assert response.getheader("Server") == "nginx", "port 80 advertises its version"


def test_nginx_refuses_an_auth_flood_in_json_with_retry_after(nginx):
    answers = [_get(nginx, "/api/v1/oauth/device_authorization", method="POST", body="x")
               for _ in range(15)]
    statuses = [response.status for response, _, _ in answers]
    # 10/min with a minute's burst: the app's own limit answers first, nginx only after it
    assert statuses[:11] == [200] * 11 and 429 in statuses, statuses
    for response, _, body in answers:
        if response.status == 429:
            assert response.getheader("Content-Type") == "application/json"
            assert json.loads(body)["error"] == "rate_limited"
            assert response.getheader("Retry-After") == "6"  # one request per 6 s
    assert _get(nginx, "/api/v1/me")[0].status == 200  # other paths are not in that zone


def test_device_polling_meets_no_nginx_limit(nginx):
    """RFC 8628 polling at 12 a minute for a long approval: the app paces it (slow_down)."""
    statuses = {_get(nginx, "/api/v1/oauth/token", method="POST", body="x")[0].status
                for _ in range(40)}
    assert statuses == {200}


def test_nginx_refuses_an_oversized_body_in_json(nginx):
    # the site's max_upload_mb is 50: nginx refuses on the announced length alone
    response, _, body = _get(nginx, "/api/v1/me", method="POST", body=b"{}",
                             headers={"Content-Length": str(51 * 1024 * 1024)})
    assert response.status == 413
    assert response.getheader("Content-Type") == "application/json"
    assert json.loads(body)["error"] == "payload_too_large"


# --- systemd units --------------------------------------------------------------------------

def _units(tmp_path) -> dict[str, bytes]:
    with key_env():
        site_dir = make_site(tmp_path / "site", {"centrifugo.binary": "/bin/true"},
                             agents=True, centrifugo=True)
        site, inventory, secrets, pem = load_for_render(site_dir)
    units = {}
    for host in ("node1", "agent1"):
        for f in render_host(site, inventory, host, secrets, pem):
            if f.path.startswith("/etc/systemd/system/") and f.path.endswith(".service"):
                units[os.path.basename(f.path)] = f.content
    return units


def test_every_unit_scores_at_most_2(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    units = _units(tmp_path)
    assert set(units) == {"cmdop-server.service", "cmdop-audit-retention.service",
                          "centrifugo.service", "cmdop-agent.service", "cmdop-firewall.service",
                          "cmdop-sessions-sweep.service", "cmdop-backup.service"}
    scores = {}
    for name, content in units.items():
        path = tmp_path / name
        path.write_bytes(content)
        done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)],
                              capture_output=True, text=True, timeout=60, check=False)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        if match is None:
            pytest.skip(f"systemd-analyze security --offline is unusable here: "
                        f"{done.stderr.strip()[:200]}")
        scores[name] = float(match.group(1))
    assert all(score <= 2.0 for score in scores.values()), scores


# Debian's stock units for the daemons we do not own (packages nginx and postgresql-15)
STOCK_UNITS = {"nginx.service": "nginx.service",
               "postgresql@15-main.service": "postgresql@.service"}


def _score(root: Path, unit: str) -> float:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                           "--no-pager", unit],
                          capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    return float(match.group(1))


def test_stock_daemon_units_get_a_sandbox_drop_in(tmp_path):
    """Our drop-ins read on top of Debian's units, the way systemd reads them (--root)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    missing = [s for s in STOCK_UNITS.values() if not Path("/lib/systemd/system", s).exists()]
    if missing:
        pytest.skip(f"Debian's units are not installed: {missing} (scripts/bootstrap.sh)")
    with key_env():
        site_dir = make_site(tmp_path / "site")
        site, inventory, secrets, pem = load_for_render(site_dir)
    root = tmp_path / "root"
    for unit, stock in STOCK_UNITS.items():
        (root / "lib/systemd/system").mkdir(parents=True, exist_ok=True)
        shutil.copy(Path("/lib/systemd/system", stock), root / "lib/systemd/system" / stock)
        assert _score(root, unit) > 9, unit  # what Debian ships: UNSAFE
    dropins = [f for f in render_host(site, inventory, "node1", secrets, pem)
               if re.fullmatch(r"/etc/systemd/system/[^/]+\.service\.d/[^/]+\.conf", f.path)
               and f.path.split("/")[4].removesuffix(".d") in STOCK_UNITS]
    assert len(dropins) == 2, [f.path for f in dropins]
    for f in dropins:
        dest = root / f.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.content)
    # nginx's master keeps root's few capabilities (ports, workers' user, logs); Postgres runs
    # as its owner from the start
    assert _score(root, "nginx.service") <= 2.5
    assert _score(root, "postgresql@15-main.service") <= 1.5
