"""Rotating a Redis ACL password on a real redis-server run from our rendered files.

The site folder, secrets.enc, rotation.json and the phase machine are the real ones; each
phase's deploy is what the Redis host gets: the rendered users.acl and ACL LOAD file
written into the server's scratch root, then ACL LOAD by the deploy's own shell command
(deploys/redis.py) on the rendered admin socket. While a rotation is admitted or switched
both passwords log in; after --finish the old one is refused; the server is never
restarted. The ACL LOAD user can do nothing else, and only root opens its socket.
"""

from __future__ import annotations

import os
import pwd
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import redis
from cmdop_install import rotation
from cmdop_install.deploys.redis import acl_load_command
from cmdop_install.render import Paths
from cmdop_install.rotation import Rotation, resolve
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
    serve_site_redis,
)

pytestmark = pytest.mark.integration

APP = "redis_password_app"
REDIS_FILES = ("users.acl", "cmdop-acl-load.auth")


class Stop(Exception):
    """Raised from the rotation's output to stop it at a phase boundary."""


class RedisHost:
    """A redis-server on our rendered files; ``deploy`` stands in for ``deploy_site``."""

    def __init__(self, server: RedisServer, site_dir: Path) -> None:
        self.server = server
        self.site_dir = site_dir
        self.loads = 0
        self.acl_load = True  # False: write the files only (the Ansible role loads them)

    def deploy(self, site: SiteDir, limit=None, dry_run=False) -> RunResult:
        assert "redis" in (limit or [])
        changed = False
        for f in site.files("node1"):
            name = f.path.rsplit("/", 1)[1]
            if f.path.startswith("/etc/redis/") and name in REDIS_FILES:
                path = self.server.dir / f.path.lstrip("/")
                changed |= name == "users.acl" and path.read_bytes() != f.content
                path.write_bytes(f.content)
                path.chmod(f.mode)
                if os.geteuid() == 0:
                    shutil.chown(path, f.owner, f.group)
        if changed and self.acl_load:  # as the deploy: ACL LOAD only when users.acl changed
            done = subprocess.run(["sh", "-c", acl_load_command(Paths(root=str(self.server.dir)))],
                                  capture_output=True, text=True, timeout=30, check=False)
            assert done.returncode == 0, done.stderr
            self.loads += 1
        return RunResult(hosts={"node1": HostResult("node1")}, dry_run=False)

    def client(self, username: str, password: str, retries: int = 0) -> redis.Redis:
        tls = self.server.dir / "etc/redis/tls"
        return redis.Redis(
            host="127.0.0.1", port=self.server.port, username=username, password=password,
            ssl=True, ssl_ca_certs=str(tls / "ca.crt"), ssl_cert_reqs="required",
            ssl_min_version=ssl.TLSVersion.TLSv1_3,
            ssl_certfile=str(self.site_dir / "pki/app-node1.crt"),
            ssl_keyfile=str(self.site_dir / "plain-app-node1.key"),
            socket_timeout=5, socket_connect_timeout=5,
            retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)))

    def logs_in(self, password: str, username: str = "testsite-app") -> bool:
        try:
            return bool(self.client(username, password).ping())
        except redis.exceptions.AuthenticationError:
            return False

    def admin(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.server.dir / "run/redis/cmdop-acl.sock"),
                           username="testsite-acl-load",
                           password=password or SiteDir.load(self.site_dir).secrets[
                               "redis_password_admin"],
                           socket_timeout=5, retry=Retry(NoBackoff(), 0))


def _current(site_dir: Path) -> str:
    return SiteDir.load(site_dir).secrets[APP]


@pytest.fixture
def host(tmp_path, monkeypatch):
    site_dir = tmp_path / "site"
    server = RedisServer()
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    make_site(site_dir, {"redis.port": server.port})
    plain_key(site_dir, "app-node1")
    serve_site_redis(site_dir, server)
    fake = RedisHost(server, site_dir)
    monkeypatch.setattr(rotation, "deploy_site", fake.deploy)
    with server:
        yield fake


def _rotate_until(site_dir: Path, boundary: str | None, names=(APP,)) -> None:
    def echo(line: str) -> None:
        if boundary and line.startswith(f"phase {boundary}: done"):
            raise Stop

    try:
        Rotation(SiteDir.load(site_dir), echo).start_or_resume(resolve(tuple(names), False))
    except Stop:
        pass


def test_old_and_new_log_in_until_finish_then_only_the_new_without_a_restart(host):
    site_dir = host.site_dir
    old = _current(site_dir)
    pid = host.server.proc.pid
    # a client connected before, as the control plane's (one retry on a broken connection)
    before = host.client("testsite-app", old, retries=1)
    before.set("testsite:kept", "1")

    _rotate_until(site_dir, "admitted")
    new = SiteDir.load(site_dir).store._entries[APP]["next"]["value"]
    assert host.loads == 1
    assert host.logs_in(old) and host.logs_in(new)
    assert before.get("testsite:kept") == b"1"  # Redis 7.0 closed it; the retry reopened it
    acl = (host.server.dir / "etc/redis/users.acl").read_bytes()

    _rotate_until(site_dir, None)  # switched: the control plane's credential is the new one
    assert _current(site_dir) == new
    assert host.logs_in(old) and host.logs_in(new)
    # the same users.acl whichever is current: the switch needs no ACL LOAD
    assert (host.server.dir / "etc/redis/users.acl").read_bytes() == acl
    assert host.loads == 1

    Rotation(SiteDir.load(site_dir), lambda line: None).finish()
    assert host.loads == 2
    assert not host.logs_in(old)
    assert host.logs_in(new)
    # never restarted: the same process still holds what it held (it persists nothing)
    assert host.server.proc.pid == pid and host.server.proc.poll() is None
    assert host.client("testsite-app", new).get("testsite:kept") == b"1"
    assert old not in (host.server.dir / "etc/redis/users.acl").read_text()


@pytest.mark.parametrize("boundary", ["admitted", None])
def test_rollback_gives_back_the_old_password_only(host, boundary):
    site_dir = host.site_dir
    old = _current(site_dir)
    _rotate_until(site_dir, boundary)
    new = SiteDir.load(site_dir).secrets.get(f"{APP}:next") or _current(site_dir)
    assert new != old and host.logs_in(new)
    Rotation(SiteDir.load(site_dir), lambda line: None).rollback()
    assert _current(site_dir) == old
    assert host.logs_in(old)
    assert not host.logs_in(new)


def test_the_acl_load_user_rotates_its_own_password_through_its_own_socket(host):
    site_dir = host.site_dir
    old = SiteDir.load(site_dir).secrets["redis_password_admin"]
    _rotate_until(site_dir, None, names=("redis_password_admin",))
    Rotation(SiteDir.load(site_dir), lambda line: None).finish()
    new = SiteDir.load(site_dir).secrets["redis_password_admin"]
    assert new != old and host.loads == 2
    assert host.admin(new).execute_command("ACL", "LOAD") == b"OK"
    with pytest.raises(redis.exceptions.AuthenticationError):
        host.admin(old).ping()


@pytest.mark.parametrize("command", [
    ("GET", "testsite:x"), ("SET", "testsite:x", "1"), ("KEYS", "*"), ("FLUSHALL",),
    ("CONFIG", "GET", "*"), ("CONFIG", "REWRITE"), ("ACL", "SETUSER", "x", "on"),
    ("ACL", "SAVE"), ("ACL", "LIST"), ("ACL", "GETUSER", "testsite-app"), ("ACL", "LOG"),
    ("CLIENT", "LIST"), ("SHUTDOWN",), ("PUBLISH", "testsite:x", "m"),
])
def test_the_acl_load_user_may_run_acl_load_and_nothing_else(host, command):
    # a connection each: Redis 7.0 closes every logged-in connection after ACL LOAD
    assert host.admin().execute_command("ACL", "LOAD") == b"OK"
    with pytest.raises(redis.exceptions.NoPermissionError):
        host.admin().execute_command(*command)


def test_its_config_set_cannot_reach_a_protected_config(host):
    """CONFIG SET is the user's for new certificates (deploys/redis.py); the configs that
    would let it write files elsewhere stay refused (enable-protected-configs no)."""
    for name, value in (("dir", "/srv"), ("dbfilename", "x.rdb")):
        with pytest.raises(redis.exceptions.ResponseError, match="protected config"):
            host.admin().execute_command("CONFIG", "SET", name, value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to try the socket as another user")
def test_only_root_and_redis_open_the_acl_load_socket(host):
    sock = host.server.dir / "run/redis/cmdop-acl.sock"
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    assert pwd.getpwuid(sock.stat().st_uid).pw_name == (host.server.run_as or "root")
    # as nobody (a compromised service's user), the socket refuses to open
    probe = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "redis-cli", "-s",
         str(sock), "PING"], capture_output=True, text=True, timeout=30, check=False)
    assert "Permission denied" in probe.stdout + probe.stderr, (probe.stdout, probe.stderr)
    assert host.admin().execute_command("ACL", "LOAD") == b"OK"  # root, the deploy's user


def test_the_acl_load_user_gets_nothing_over_tls_either(host):
    password = SiteDir.load(host.site_dir).secrets["redis_password_admin"]
    # without a client certificate of the site's CA the TLS port opens no connection at all
    bare = redis.Redis(host="127.0.0.1", port=host.server.port, username="testsite-acl-load",
                       password=password, ssl=True, ssl_cert_reqs="required",
                       ssl_ca_certs=str(host.server.dir / "etc/redis/tls/ca.crt"),
                       socket_timeout=5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.exceptions.ConnectionError) as refused:
        bare.ping()
    assert not isinstance(refused.value, redis.exceptions.AuthenticationError)
    # with the control plane's certificate and the password: still ACL LOAD only
    with pytest.raises(redis.exceptions.NoPermissionError):
        host.client("testsite-acl-load", password).get("testsite:x")


def _role_acl_tasks(host: RedisHost) -> int:
    """The cmdop_redis role's tasks from its users.acl check on (its certificate tasks
    after them find nothing to do once they have recorded what Redis serves)."""
    return redis_role_tasks(host.server, "The current users.acl and the copy of what Redis "
                                         "last loaded")


@pytest.mark.skipif(os.geteuid() != 0, reason="the role's copy of users.acl is root's")
def test_the_ansible_role_loads_a_changed_users_acl_without_a_restart(host):
    """As the pyinfra deploy: ACL LOAD when users.acl differs from the copy of what Redis last
    loaded (no restart: every client stays on the same server), nothing when it does not."""
    site_dir = host.site_dir
    pid = host.server.proc.pid
    loaded = host.server.dir / "etc/redis/users.acl.loaded"
    # no copy yet (a site from before the role had one), no record of the certificates Redis
    # read either: ACL LOAD and its copy, CONFIG SET and its record
    assert _role_acl_tasks(host) == 4
    assert _role_acl_tasks(host) == 0
    host.acl_load = False  # the rotation's files only: the role loads them
    old = _current(site_dir)
    _rotate_until(site_dir, "admitted")
    new = SiteDir.load(site_dir).store._entries[APP]["next"]["value"]
    assert not host.logs_in(new)
    assert _role_acl_tasks(host) == 2
    assert host.logs_in(new) and host.logs_in(old)
    assert loaded.read_bytes() == (host.server.dir / "etc/redis/users.acl").read_bytes()
    assert oct(loaded.stat().st_mode & 0o777) == "0o600"
    assert host.server.proc.pid == pid and host.server.proc.poll() is None
