"""Production settings: secrets from files, refusal of DEBUG and weak keys, a clean
``check --deploy --fail-level WARNING``, and our cmdop.W00x checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

STRONG = "Zq3" + "vT8pL2xR7mN4kW9sB6yH1cJ5dF0gA" * 2
TOTP_KEY = "Tk9" + "mW4qZ8rB1xN6vL3sJ7dH2gF5cY0pE" * 2
TOML = """
[server]
allowed_hosts = ["cmdop.example.com"]
public_url = "https://cmdop.example.com"
{extra_server}
[database]
host = "db.internal"
name = "cmdop"
user = "cmdop_app"
sslrootcert = "/etc/cmdop/pki/ca.crt"

[audit_database]
host = "db.internal"
name = "cmdop_audit"
user = "cmdop_audit"
sslrootcert = "/etc/cmdop/pki/ca.crt"

[redis]
host = "redis.internal"
username = "app"
ssl_ca_certs = "/etc/cmdop/pki/ca.crt"

[rate_limits]
auth = "20/min"
"""


def _site(tmp_path: Path, secret_key=STRONG, fallbacks=(), extra_server="",
          totp_keys=(TOTP_KEY,)) -> dict:
    creds = tmp_path / "credentials"
    creds.mkdir()
    files = {"secret_key": secret_key + "\n", "db_password": "pw-db\n",
             "redis_password": "pw-redis\n",
             # read when [centrifugo] enabled = true (issue 5)
             "centrifugo_api_key": "k" * 40 + "\n", "centrifugo_hmac_key": "h" * 48 + "\n",
             "totp_key": "".join(f"{key}\n" for key in totp_keys)}
    if fallbacks:
        files["secret_key_fallbacks"] = "\n".join(fallbacks) + "\n"
    for name, value in files.items():
        (creds / name).write_text(value)
        (creds / name).chmod(0o600)
    toml = tmp_path / "server.toml"
    toml.write_text(TOML.format(extra_server=extra_server))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CMDOP_"))}
    return env | {"CMDOP_CONFIG_DIR": str(creds), "CMDOP_SERVER_TOML": str(toml)}


def _cmdop_server(env: dict, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("cmdop-server")
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_check_deploy_has_zero_warnings(tmp_path):
    done = _cmdop_server(_site(tmp_path, fallbacks=["Y" * 10 + STRONG]), "check", "--deploy",
                         "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    # security.W021 (no HSTS preload) only: the sites run on an internal CA
    assert "no issues (1 silenced)" in done.stdout


def test_browser_headers_are_sent_once_with_no_preload(tmp_path):
    env = _site(tmp_path) | {"DJANGO_SETTINGS_MODULE": "cmdop_server.settings.production"}
    code = ("import json, django; django.setup(); from django.test import Client; "
            "r = Client().get('/assets/cmdop.css', secure=True, HTTP_HOST='cmdop.example.com'); "
            "print(json.dumps([r.status_code, sorted(r.headers.items())]))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    status, headers = json.loads(done.stdout)
    assert status == 200
    headers = dict(headers)
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert headers["X-Content-Type-Options"] == "nosniff"
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


GOLDEN = Path(__file__).resolve().parents[1] / "installer/golden/node1/etc/cmdop/server.toml"


@pytest.mark.skipif(not GOLDEN.exists(), reason="installer golden files not present")
def test_the_installers_rendered_server_toml_passes_check_deploy(tmp_path):
    """The contract in docs/server-config.md, end to end: the installer's golden output."""
    env = _site(tmp_path) | {"CMDOP_SERVER_TOML": str(GOLDEN)}
    done = _cmdop_server(env, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.CMDOP_REDIS_KEY_PREFIX, s.DATABASES['audit']['NAME'], "
            "s.DATABASES['default']['OPTIONS']['ssl_min_protocol_version'], "
            "s.CMDOP_SESSION_IDLE_TIMEOUT, s.CMDOP_RATE_LIMITS['input_bytes'])")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env | {"DJANGO_SETTINGS_MODULE": "cmdop_server.settings.production"},
                           timeout=60, check=False)
    assert probe.stdout.split() == ["golden:", "cmdop_audit", "TLSv1.3", "1800",
                                    "1048576/min"], probe.stderr


def test_no_switch_lowers_tls(tmp_path):
    env = _site(tmp_path)
    toml = Path(env["CMDOP_SERVER_TOML"])
    toml.write_text(toml.read_text().replace('user = "cmdop_app"',
                                             'user = "cmdop_app"\nsslmode = "require"'))
    done = _cmdop_server(env, "check")
    assert done.returncode != 0 and "verify-full" in done.stderr
    toml.write_text(TOML.format(extra_server="") + '\n[centrifugo]\nenabled = true\n'
                    'api_url = "http://127.0.0.1:9000/api"\n')
    done = _cmdop_server(env, "check")
    assert done.returncode != 0 and "[centrifugo] api_url must be https://" in done.stderr
    assert "Traceback" not in done.stderr


def test_settings_come_from_the_files(tmp_path):
    env = _site(tmp_path, fallbacks=["Y" * 10 + STRONG]) | {
        "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.production"}
    code = ("import json, django; django.setup(); from django.conf import settings as s; "
            "print(json.dumps({'fallbacks': len(s.SECRET_KEY_FALLBACKS), "
            "'db': s.DATABASES['default']['OPTIONS'], 'pw': s.DATABASES['default']['PASSWORD'],"
            " 'audit': s.DATABASES['audit']['NAME'], 'redis_ssl': s.CMDOP_REDIS['ssl'], "
            "'rl': s.CMDOP_RATE_LIMITS, 'debug': s.DEBUG, 'totp': s.CMDOP_TOTP_KEYS, "
            f"'key_ok': s.SECRET_KEY == {STRONG!r}}}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got == {"fallbacks": 1, "db": {"sslmode": "verify-full",
                                          "sslrootcert": "/etc/cmdop/pki/ca.crt",
                                          "ssl_min_protocol_version": "TLSv1.3"},
                   "pw": "pw-db", "audit": "cmdop_audit", "redis_ssl": True,
                   "rl": {"auth": "20/min", "session": "100/min", "file": "50/min",
                          "input_bytes": "1048576/min"},
                   "debug": False, "key_ok": True, "totp": [TOTP_KEY]}


def test_totp_keys_newest_first_and_a_weak_one_refused(tmp_path):
    """The TOTP secrets' sealing key is a credential of its own, one per line, newest first
    (cmdop_server.sealing); weak ones refuse to start as a weak SECRET_KEY does."""
    newer = "N" * 8 + TOTP_KEY
    env = _site(tmp_path, totp_keys=(newer, TOTP_KEY)) | {
        "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.production"}
    code = ("import json, django; django.setup(); from django.conf import settings as s; "
            "print(json.dumps(s.CMDOP_TOTP_KEYS))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and json.loads(done.stdout) == [newer, TOTP_KEY], done.stderr
    (tmp_path / "weak").mkdir()
    done = _cmdop_server(_site(tmp_path / "weak", totp_keys=("Tq7-weak",)), "check")
    assert done.returncode != 0 and "totp_key is weak" in done.stderr
    assert "Tq7-weak" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("key", ["short-key", "django-insecure-" + "a1b2c3d4e5" * 6,
                                 "aaaaabbbbb" * 6])
def test_weak_secret_key_refuses_to_start(tmp_path, key):
    done = _cmdop_server(_site(tmp_path, secret_key=key), "check")
    assert done.returncode != 0
    assert "refusing to start" in done.stderr and "Traceback" not in done.stderr
    assert key not in done.stderr


def test_weak_fallback_refuses_to_start(tmp_path):
    done = _cmdop_server(_site(tmp_path, fallbacks=["weak"]), "check")
    assert done.returncode != 0 and "secret_key_fallbacks is weak" in done.stderr


def test_debug_cannot_be_switched_on(tmp_path):
    done = _cmdop_server(_site(tmp_path, extra_server="debug = true"), "check")
    assert done.returncode != 0 and "DEBUG is not available" in done.stderr
    (tmp_path / "env").mkdir()
    done = _cmdop_server(_site(tmp_path / "env") | {"DJANGO_DEBUG": "1"}, "check")
    assert done.returncode != 0 and "DEBUG is not available" in done.stderr


def test_missing_secret_file_is_one_line(tmp_path):
    env = _site(tmp_path)
    Path(env["CMDOP_CONFIG_DIR"], "db_password").unlink()
    done = _cmdop_server(env, "check")
    assert done.returncode != 0 and "missing secret file" in done.stderr
    assert "Traceback" not in done.stderr


def test_our_checks_flag_the_dev_settings():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    done = _cmdop_server(env, "--dev", "check", "--deploy")
    out = done.stdout + done.stderr
    for warning in ("cmdop.W002", "cmdop.W003", "cmdop.W006"):
        assert warning in out, out
