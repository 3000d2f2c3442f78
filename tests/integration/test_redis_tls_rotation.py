"""`rotate SITE pki_ca` on a real redis-server run from our rendered files, with the deploy's
own CONFIG SET (deploys/redis.py) instead of a restart, or the Ansible role's tasks that
do the same (roles/cmdop_redis/tasks/service.yml).

The site folder, pki/, rotation.json and the phase machine are the real ones; each phase's
deploy is what the Redis host gets: the rendered TLS files written into the server's
scratch root and, when they changed, the deploy's CONFIG SET on the rendered admin
socket. A connection opened before the rotation serves all through it; while both CAs are
trusted a client certificate from either logs in; after --finish the old CA's is refused
at the handshake. tests/lab/test_site_rotation_pki.py proves the whole site under load.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import redis
from cmdop_install import rotation
from cmdop_install.deploys.redis import tls_reload_command
from cmdop_install.render import Paths
from cmdop_install.runner import HostResult, RunResult
from cmdop_install.sitedir import SiteDir
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.services import RedisServer
from tests.support.sites import (
    TEST_KEY,
    make_site,
    plain_key,
    redis_role_tasks,
    rotation_step,
    serve_site_redis,
)

pytestmark = pytest.mark.integration

ROLE_TLS_TASKS = "The sha256 of the certificate files Redis should serve"


class RedisHost:
    """A redis-server on our rendered files; ``deploy`` stands in for ``deploy_site``."""

    def __init__(self, server: RedisServer, site_dir: Path) -> None:
        self.server = server
        self.site_dir = site_dir
        self.reloads = 0
        self.by_role = False  # True: the cmdop_redis role's tasks reload, not the deploy's

    def deploy(self, site: SiteDir, limit=None, dry_run=False) -> RunResult:
        assert "redis" in (limit or [])
        changed = False
        for f in site.files("node1"):
            if f.path.startswith("/etc/redis/tls/"):
                path = self.server.dir / f.path.lstrip("/")
                changed |= path.read_bytes() != f.content
                path.write_bytes(f.content)  # in place: owner and mode stay
        if self.by_role:  # the role decides from what Redis last read: 2 tasks if changed
            changes = redis_role_tasks(self.server, ROLE_TLS_TASKS)
            assert changes == (2 if changed else 0), changes
            self.reloads += changed
        elif changed:  # as the deploy: CONFIG SET when a certificate file changed
            command = tls_reload_command(Paths(root=str(self.server.dir)))
            done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                                  timeout=30, check=False)
            assert done.returncode == 0, done.stderr
            self.reloads += 1
        return RunResult(hosts={"node1": HostResult("node1")}, dry_run=False)

    def client(self, cert: Path, key: Path, ca: Path, **kwargs) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.server.port, username="testsite-app",
            password=SiteDir.load(self.site_dir).secrets["redis_password_app"], ssl=True,
            ssl_ca_certs=str(ca), ssl_cert_reqs="required",
            ssl_min_version=ssl.TLSVersion.TLSv1_3, ssl_certfile=str(cert),
            ssl_keyfile=str(key), socket_timeout=5, socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0), **kwargs)

    def refused(self, cert: Path, key: Path, ca: Path) -> bool:
        try:
            self.client(cert, key, ca).ping()
        except redis.exceptions.AuthenticationError:
            raise AssertionError("the handshake passed: only the password was refused") from None
        except redis.exceptions.ConnectionError:
            return True
        return False


@pytest.fixture
def host(tmp_path, monkeypatch):
    site_dir = tmp_path / "site"
    server = RedisServer()
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    make_site(site_dir, {"redis.port": server.port})
    serve_site_redis(site_dir, server)
    fake = RedisHost(server, site_dir)
    monkeypatch.setattr(rotation, "deploy_site", fake.deploy)
    with server:
        yield fake


def _keep(site_dir: Path, name: str, as_name: str) -> tuple[Path, Path]:
    """pki/<name>.crt and its plain key, copied as <as_name> (they change in a rotation)."""
    key = plain_key(site_dir, name)
    kept = (site_dir / f"{as_name}.crt", site_dir / f"{as_name}.key")
    shutil.copy(site_dir / "pki" / f"{name}.crt", kept[0])
    shutil.copy(key, kept[1])
    return kept


@pytest.mark.parametrize("by_role", [
    False,
    pytest.param(True, marks=pytest.mark.skipif(os.geteuid() != 0,
                                                reason="the role's record is root's")),
], ids=["deploy", "ansible-role"])
def test_a_ca_rotation_reloads_redis_without_a_restart_and_refuses_the_old_ca_after(
        host, by_role) -> None:
    site_dir = host.site_dir
    if by_role:  # the role records what Redis serves now (CONFIG SET of the same files)
        assert redis_role_tasks(host.server, ROLE_TLS_TASKS) == 2
        host.by_role = True
    old_leaf = _keep(site_dir, "app-node1", "old-app")
    old_ca = site_dir / "old-ca.crt"
    shutil.copy(site_dir / "pki/ca.crt", old_ca)
    held = host.client(*old_leaf, old_ca, single_connection_client=True)
    assert held.ping()
    pid = host.server.proc.pid

    rotation_step(site_dir, "rotate", ("pki_ca",))
    assert host.reloads == 2  # admitted (the bundle) and switched (the certificate)
    new_leaf = _keep(site_dir, "app-node1", "new-app")
    new_ca = site_dir / "pki/ca.crt"
    bundle = site_dir / "pki/ca-bundle.crt"
    # Redis now presents the new CA's certificate, and takes a client's from either CA
    assert host.client(*new_leaf, new_ca).ping()
    assert host.refused(*new_leaf, old_ca)  # this client trusts the old CA only
    assert host.client(*old_leaf, bundle).ping()
    assert held.ping()  # the connection opened before serves on

    rotation_step(site_dir, "finish", ())
    assert host.reloads == 3
    assert host.refused(*old_leaf, bundle)  # the old CA's certificate is refused
    assert host.client(*new_leaf, bundle).ping()
    assert held.ping()
    assert host.server.proc.pid == pid and host.server.proc.poll() is None
