"""Contract: cmdop_server's production settings load from the files we render.

docs/server-config.md is the written contract; this runs the server's real reader
(``cmdop_server.settings.production``) on our rendered server.toml and credentials in a
subprocess (Django settings are process-global). Secrets are compared as hashes only.
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from cmdop_install.render_folder import render_site
from cmdop_install.secrets import SecretStore
from cmdop_install.sitedir import SiteDir

from tests.support.sites import TEST_KEY, make_site

pytestmark = pytest.mark.unit

PROBE = """
import hashlib, json
from django.conf import settings
h = lambda v: hashlib.sha256(v.encode()).hexdigest()
db = settings.DATABASES["default"]
print(json.dumps({
    "allowed_hosts": settings.ALLOWED_HOSTS, "csrf": settings.CSRF_TRUSTED_ORIGINS,
    "db_user": db["USER"], "db_host": db["HOST"], "db_options": db["OPTIONS"],
    "db_password": h(db["PASSWORD"]), "secret_key": h(settings.SECRET_KEY),
    "fallbacks": settings.SECRET_KEY_FALLBACKS, "redis_user": settings.CMDOP_REDIS["username"],
    "redis_password": h(settings.CMDOP_REDIS["password"]),
    "redis_tls": [settings.CMDOP_REDIS[k] for k in ("ssl", "ssl_ca_certs", "ssl_certfile")],
    "rate_limits": settings.CMDOP_RATE_LIMITS, "retention": settings.CMDOP_AUDIT_RETENTION_DAYS,
    "idle": settings.CMDOP_SESSION_IDLE_TIMEOUT, "totp": [h(k) for k in settings.CMDOP_TOTP_KEYS],
    "debug": settings.DEBUG, "db_engine": db["ENGINE"], "pool_timeout": db["POOL_TIMEOUT"],
}, default=str))  # the pool's connection_class is a class
"""


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_production_settings_read_our_rendered_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site = make_site(tmp_path / "site", {"rate_limits.auth_per_minute": 7,
                                         "rate_limits.input_kb_per_minute": 64,
                                         "sessions.idle_timeout_minutes": 12,
                                         "postgres.active_role": "green"})
    render_site(SiteDir.load(site), tmp_path / "out", "node1")
    secrets = SecretStore.open(site, "").values()
    etc = tmp_path / "out/node1/etc/cmdop"
    env = {**os.environ, "CMDOP_SERVER_TOML": str(etc / "server.toml"),
           "CMDOP_CONFIG_DIR": str(etc / "credentials"),
           "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.production"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["allowed_hosts"] == ["cmdop.example.com"]
    assert got["csrf"] == ["https://cmdop.example.com"]
    assert (got["db_user"], got["db_host"]) == ("cmdop_green", "127.0.0.1")
    assert got["db_options"]["sslmode"] == "verify-full"
    assert got["db_options"]["sslrootcert"] == "/etc/cmdop/tls/ca.crt"
    assert got["db_options"].get("ssl_min_protocol_version", "TLSv1.3") == "TLSv1.3"
    assert got["db_password"] == _sha(secrets["postgres_password_green"])
    assert got["secret_key"] == _sha(secrets["django_secret_key"])
    assert got["fallbacks"] == []
    assert got["totp"] == [_sha(secrets["totp_key"])]  # its own key, not django_secret_key
    assert got["redis_user"] == "testsite-app"
    assert got["redis_password"] == _sha(secrets["redis_password_app"])
    assert got["redis_tls"] == [True, "/etc/cmdop/tls/ca.crt", "/etc/cmdop/tls/app.crt"]
    assert got["rate_limits"] == {"auth": "7/min", "session": "100/min", "file": "50/min",
                                  "input_bytes": "65536/min"}
    assert got["idle"] == 12 * 60
    assert got["retention"] == 90 and got["debug"] is False
    # pooled, waiting for a connection in short steps up to pool_timeout (2 s) while the
    # server is up, and refused after one step while it refuses connections
    assert got["db_engine"] == "cmdop_server.postgres"
    assert got["pool_timeout"] == 2 and got["db_options"]["pool"]["timeout"] < 0.5
    assert not [n for n, v in secrets.items() if v in done.stdout + done.stderr]


def test_agent_reads_our_rendered_config(tmp_path, monkeypatch):
    from cmdop_agent.config import load_config
    from cmdop_install.render import load_for_render, render_host

    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site_dir = make_site(tmp_path / "site", agents=True)
    site, inventory, secrets, pem = load_for_render(site_dir)
    root = tmp_path / "root"
    for f in render_host(site, inventory, "agent1", secrets, pem, root=str(root)):
        dest = root / f.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.content)
        dest.chmod(f.mode)
    config = load_config(root / "etc/cmdop-agent/agent.toml")
    assert config.server == "https://cmdop.example.com"
    assert config.ca_file == root / "etc/cmdop-agent/ca.crt"
    assert config.state_dir == root / "var/lib/cmdop-agent"
    assert config.limits.output_buffer_bytes == 1024 * 1024
