"""``cmdop-server --dev``: a developer's control plane on its own self-signed HTTPS endpoint.

It still speaks TLS (``cmdop-server --dev serve_dev`` makes a self-signed certificate and
binds 127.0.0.1:8443, a port production never uses), keys are ``cmd_test_``, and
the databases come from ``CMDOP_DEV_DATABASE_URL``-style env knobs below.
"""

from __future__ import annotations

import os

from cmdop_server.settings.base import *  # noqa: F403

DEBUG = False
SECRET_KEY = os.environ.get("CMDOP_DEV_SECRET_KEY") or "dev-only-" + "x7Qp2LmZ" * 8
CMDOP_TOTP_KEYS = [os.environ.get("CMDOP_DEV_TOTP_KEY") or "dev-only-totp-" + "Rw5nK2vQ" * 6]
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
CMDOP_PUBLIC_URL = os.environ.get("CMDOP_DEV_PUBLIC_URL", "https://127.0.0.1:8443")
CSRF_TRUSTED_ORIGINS = [CMDOP_PUBLIC_URL]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CMDOP_API_KEY_PREFIX = "cmd_test_"


def _db(name: str) -> dict:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("CMDOP_DEV_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("CMDOP_DEV_DB_PORT", "5432"),
        "NAME": name,
        "USER": os.environ.get("CMDOP_DEV_DB_USER", "postgres"),
        "PASSWORD": os.environ.get("CMDOP_DEV_DB_PASSWORD", ""),
    }


DATABASES = {
    "default": _db(os.environ.get("CMDOP_DEV_DB_NAME", "cmdop")),
    "audit": _db(os.environ.get("CMDOP_DEV_AUDIT_DB_NAME", "cmdop_audit")),
}
CMDOP_REDIS = {
    "host": os.environ.get("CMDOP_DEV_REDIS_HOST", "127.0.0.1"),
    "port": int(os.environ.get("CMDOP_DEV_REDIS_PORT", "6379")),
}
