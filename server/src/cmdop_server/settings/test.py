"""The test suite's settings: databases and Redis on the scratch daemons tests start.

tests/server/conftest.py exports CMDOP_TEST_PG_PORT / CMDOP_TEST_REDIS_PORT before Django
loads this module; subprocesses (gunicorn, rate-limit workers) inherit them.
"""

from __future__ import annotations

import os

from cmdop_server import postgres
from cmdop_server.settings.dev import *  # noqa: F403

SECRET_KEY = "test-only-" + "k3Jr9TzW" * 8
CMDOP_TOTP_KEYS = ["test-only-totp-" + "Hq8cY3mV" * 6]
ALLOWED_HOSTS = ["*"]
CMDOP_PUBLIC_URL = "http://testserver"
CSRF_TRUSTED_ORIGINS = ["http://localhost", "http://127.0.0.1"]
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


_POOL = os.environ.get("CMDOP_TEST_DB_POOL_MAX_SIZE", "")
_POOL_TIMEOUT = float(os.environ.get("CMDOP_TEST_DB_POOL_TIMEOUT", "0.3"))


def _db(name: str) -> dict:
    return {
        "ENGINE": "cmdop_server.postgres",
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("CMDOP_TEST_PG_PORT", "5432"),
        # subprocesses (gunicorn) point straight at the test databases pytest-django made
        "NAME": os.environ.get(f"CMDOP_TEST_DB_{name.upper()}", name),
        "USER": "postgres",
        "PASSWORD": "",
        # production keeps connections (server.toml conn_max_age, default 60, or its pool);
        # bench/auth.py does too, the tests do not. A pool keeps them itself (Django
        # refuses both at once).
        "CONN_MAX_AGE": 0 if _POOL else int(os.environ.get("CMDOP_TEST_CONN_MAX_AGE", "0")),
        "TEST": {"NAME": f"test_{name}"},
        # a gunicorn of a test may pool its connections as a deployed site does
        # (server.toml [database] pool_max_size; tests/server_sessions/test_db_pool.py)
        "OPTIONS": ({"pool": {"min_size": 1, "max_size": int(_POOL),
                              "timeout": min(postgres.WAIT_STEP, _POOL_TIMEOUT),
                              "connection_class": postgres.WatchedConnection}}
                    if _POOL else {}),
        "POOL_TIMEOUT": _POOL_TIMEOUT,
        # as production: a pool then checks a connection before lending it
        "CONN_HEALTH_CHECKS": True,
    }


DATABASES = {"default": _db("cmdop"), "audit": _db("cmdop_audit")}
CMDOP_REDIS = {"host": "127.0.0.1", "port": int(os.environ.get("CMDOP_TEST_REDIS_PORT", "6379"))}
# a control plane behind a real nginx on gunicorn's unix socket trusts that socket's peer,
# as a deployed site does (tests/server_sessions/test_client_address.py)
CMDOP_TRUSTED_PROXIES = os.environ.get("CMDOP_TEST_TRUSTED_PROXIES", "").split()
# a gunicorn of a test serves /metrics to these networks, its workers sharing their numbers
# through this folder (tests/server_sessions/test_metrics.py)
CMDOP_METRICS_ALLOWED_SOURCES = os.environ.get("CMDOP_TEST_METRICS_SOURCES", "").split()
CMDOP_METRICS_DIR = os.environ.get("CMDOP_TEST_METRICS_DIR", "")

# Tests that run the device flow and token refresh against their own gunicorn in seconds,
# not minutes (tests/server_sessions/test_real_agent_enroll.py); unset, the base values.
CMDOP_ACCESS_TOKEN_TTL = int(os.environ.get("CMDOP_TEST_ACCESS_TOKEN_TTL",
                                            CMDOP_ACCESS_TOKEN_TTL))  # noqa: F405
CMDOP_DEVICE_POLL_INTERVAL = int(os.environ.get("CMDOP_TEST_DEVICE_POLL_INTERVAL",
                                                CMDOP_DEVICE_POLL_INTERVAL))  # noqa: F405
