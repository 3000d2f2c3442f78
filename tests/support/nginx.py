"""Our rendered nginx site file in a real nginx, on free loopback ports, in front of whatever
listens on the unix socket path a deployed gunicorn uses (``Nginx.app_socket``).

``Nginx(root, site_dir)`` renders node1 of ``site_dir`` under ``root`` (``root`` must not be
under pytest's 0700 tmp: nginx runs as www-data when we are root and must reach the
socket), runs our rendered main ``nginx.conf`` (which includes ``conf.d/cmdop.conf``) with
the open-file limit of our rendered unit drop-in, validated with ``nginx -t`` first.
``connect(source=...)`` opens a TLS connection to it from a chosen loopback source address,
so one test can be several clients.
"""

from __future__ import annotations

import http.client
import os
import pwd
import resource
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmdop_install.render import load_for_render, render_host

from tests.support.control_plane import ControlPlane
from tests.support.services import free_port, wait_for_port
from tests.support.sites import key_env, make_site

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_ETC = "/etc/nginx"
PRLIMIT = shutil.which("prlimit") or "/usr/bin/prlimit"


def unprivileged_user() -> str | None:
    """www-data when we are root (the whole nginx then runs unprivileged), else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        return None
    return "www-data"


class Nginx:
    def __init__(self, root: Path, site_dir: Path) -> None:
        self.root = root
        site, inventory, secrets, pem = load_for_render(site_dir)
        self.https = site["control_plane"]["https_port"]
        self.domain = site["site"]["domain"]
        for f in render_host(site, inventory, "node1", secrets, pem, root=str(root)):
            dest = root / f.path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.content)
            dest.chmod(f.mode)
        self.ca = root / "etc/nginx/tls/ca.crt"
        self.app_socket = root / "run/cmdop/gunicorn.sock"
        self.app_socket.parent.mkdir(parents=True, exist_ok=True)
        for d in (root, root / "run", self.app_socket.parent):
            d.chmod(0o755)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        root = self.root
        main_conf = root / "etc/nginx/nginx.conf"
        # what Debian's package provides beside the file we render
        for folder in ("var/log/nginx", "var/lib/nginx", "etc/nginx/modules-enabled",
                       "etc/nginx/sites-enabled"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(NGINX_ETC) / "mime.types", root / "etc/nginx/mime.types")
        user = unprivileged_user()
        if user:
            for path in [root, *root.rglob("*")]:
                if not path.is_socket():
                    shutil.chown(path, user, user)
        # the open-file limit our drop-in gives nginx.service (as far as our own hard limit
        # lets an unprivileged process go)
        nofile = min(self.limit_nofile(), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        argv = [PRLIMIT, f"--nofile={nofile}:{nofile}", "--", NGINX, "-c", str(main_conf),
                "-e", str(root / "e.log"), "-g", "daemon off;"]
        test = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True,
                              check=False, user=user)
        if test.returncode != 0:  # the daemon validates our file first
            raise RuntimeError(f"nginx -t refused the rendered site: {test.stderr}")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, user=user)
        wait_for_port("127.0.0.1", self.https, self.proc)

    def limit_nofile(self) -> int:
        """LimitNOFILE of our rendered nginx.service drop-in."""
        dropin = self.root / "etc/systemd/system/nginx.service.d/cmdop-hardening.conf"
        for line in dropin.read_text().splitlines():
            if line.startswith("LimitNOFILE="):
                return int(line.partition("=")[2])
        raise RuntimeError(f"{dropin}: no LimitNOFILE")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def connect(self, source: str = "127.0.0.1",
                timeout: float = 10) -> http.client.HTTPSConnection:
        """A TLS connection to nginx from ``source`` (any 127/8 address), SNI and the
        certificate checked against the site's public name."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        conn = http.client.HTTPSConnection(self.domain, self.https, context=ctx, timeout=timeout)
        raw = socket.create_connection(("127.0.0.1", self.https), timeout,
                                       source_address=(source, 0))
        conn.sock = ctx.wrap_socket(raw, server_hostname=self.domain)
        return conn

    def request(self, method: str, path: str, source: str = "127.0.0.1",
                body: bytes | None = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers, body)."""
        conn = self.connect(source)
        try:
            conn.request(method, path, body=body, headers={"Host": self.domain, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


@contextmanager
def control_plane_behind_nginx(tls_pki, tmp_path_factory, site: dict | None = None,
                               env: dict[str, str] | None = None) -> Iterator[Nginx]:
    """The real control plane on a deployed site's unix socket, trusting only that peer, behind
    our rendered nginx on free loopback ports (skipped where nginx is not installed).
    ``site`` adds site.toml values ({"section.key": value}), ``env`` the app's environment."""
    import pytest

    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed (scripts/bootstrap.sh installs it)")
    root = Path(tempfile.mkdtemp(prefix="cmdop-web-"))
    with key_env():
        site_dir = make_site(tmp_path_factory.mktemp("site"), {
            "control_plane.https_port": free_port(), "control_plane.http_port": free_port(),
            **(site or {})})
        nginx = Nginx(root, site_dir)
    app = ControlPlane(tls_pki, tmp_path_factory.mktemp("app") / "gunicorn.log",
                       env={"CMDOP_TEST_TRUSTED_PROXIES": "unix", **(env or {})},
                       unix_socket=nginx.app_socket)
    try:
        app.start()
        nginx.start()
        yield nginx
    finally:
        nginx.stop()
        app.stop()
        shutil.rmtree(root, ignore_errors=True)
