"""Production: every value comes from server.toml and the credentials dir (cmdop_server.config).

There is deliberately no switch here that turns TLS off or DEBUG on: Django sits behind
nginx, which terminates TLS 1.3; Postgres is reached with sslmode=verify-full and Redis
over TLS. A weak or missing key refuses to start.
"""

from __future__ import annotations

import os
import ssl

from django.core.exceptions import ImproperlyConfigured

from cmdop_server import config, netinfo, postgres
from cmdop_server.settings.base import *  # noqa: F403
from cmdop_server.settings.keys import require_strong_key

_site = config.load_server_toml()
_server = _site.get("server", {})

DEBUG = False
if _server.get("debug") or os.environ.get("DJANGO_DEBUG"):
    raise ImproperlyConfigured("DEBUG is not available in production (use cmdop-server --dev)")
SECRET_KEY = require_strong_key("secret_key", config.read_secret("secret_key"))
SECRET_KEY_FALLBACKS = [
    require_strong_key("secret_key_fallbacks", key)
    for key in config.read_secret_lines("secret_key_fallbacks")
]
# TOTP secrets are sealed with a key of their own (cmdop_server.sealing), so that rotating
# SECRET_KEY never makes them unreadable: one per line, newest first
CMDOP_TOTP_KEYS = [require_strong_key("totp_key", line.strip())
                   for line in config.read_secret("totp_key").splitlines() if line.strip()]

ALLOWED_HOSTS = list(_server.get("allowed_hosts", []))
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("server.toml [server] allowed_hosts is empty")
CMDOP_PUBLIC_URL = _server.get("public_url") or f"https://{ALLOWED_HOSTS[0]}"
if not CMDOP_PUBLIC_URL.startswith("https://"):
    raise ImproperlyConfigured("server.toml [server] public_url must be https://")
CSRF_TRUSTED_ORIGINS = [CMDOP_PUBLIC_URL]
# gunicorn's only peer is our nginx on the unix socket (cmdop_server.netinfo)
CMDOP_TRUSTED_PROXIES = list(_server.get("trusted_proxies", [netinfo.UNIX_PEER]))
for _proxy in CMDOP_TRUSTED_PROXIES:
    if _proxy != netinfo.UNIX_PEER and not netinfo.is_address(_proxy):
        raise ImproperlyConfigured(f"server.toml [server] trusted_proxies: {_proxy!r} is not "
                                   f"an IP address or {netinfo.UNIX_PEER!r}")

# nginx terminates TLS and sets X-Forwarded-Proto; everything else is HTTPS-only.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = True
# the installer's health probe talks to the gunicorn socket directly (no nginx, no TLS)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = int(_server.get("hsts_seconds", 31536000))
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
# No preload: the preload list is a commitment browsers ship for years, and most sites run
# on their internal CA, which browsers outside the organisation never trust. The app is the
# one sender of HSTS (nginx adds none), so the header is sent once with one value.
SECURE_HSTS_PRELOAD = False
SILENCED_SYSTEM_CHECKS = ["security.W021"]  # "preload not set": deliberately so, above
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True


def _database(section: dict, password_file: str, default_password: str | None) -> dict:
    for key in ("host", "name", "user", "sslrootcert"):
        if not section.get(key):
            raise ImproperlyConfigured(f"server.toml database setting {key!r} is missing")
    if section.get("sslmode", "verify-full") != "verify-full":
        raise ImproperlyConfigured("server.toml sslmode can only be verify-full")
    options = {
        "sslmode": "verify-full",
        "sslrootcert": section["sslrootcert"],
        "ssl_min_protocol_version": section.get("ssl_min_protocol_version", "TLSv1.3"),
    }
    if section.get("sslcert"):
        options |= {"sslcert": section["sslcert"], "sslkey": section["sslkey"]}
    pooled = int(section.get("pool_max_size", 0))
    if pooled:
        # Django's psycopg pool, one per worker process and database: a request borrows a
        # connection and gives it back when it ends (dbconn), instead of a TLS connection
        # and a Postgres backend made for every request
        options["pool"] = {
            "min_size": int(section.get("pool_min_size", 1)),
            "max_size": pooled,
            # a request waits for a connection in steps of this; between two it gives up
            # (503) if the server refuses connections (cmdop_server.postgres), so Postgres
            # being down costs a request one step, not POOL_TIMEOUT
            "timeout": postgres.WAIT_STEP,
            # what the pool's connections are, so that a refused attempt is seen
            "connection_class": postgres.WatchedConnection,
            # renewed now and then, so a rotated password or a moved server is picked up
            "max_lifetime": float(section.get("pool_max_lifetime", 600)),
        }
    return {
        "ENGINE": "cmdop_server.postgres",
        "HOST": section["host"],
        "PORT": str(section.get("port", 5432)),
        "NAME": section["name"],
        "USER": section["user"],
        "PASSWORD": config.read_secret(password_file, default_password),
        # the pool keeps the connections; Django's own persistence is for unpooled sites
        "CONN_MAX_AGE": 0 if pooled else int(section.get("conn_max_age", 60)),
        # the longest a request waits for a pooled connection while the server is up and
        # every connection busy, then 503
        "POOL_TIMEOUT": float(section.get("pool_timeout", 2)),
        # with the pool too: Django then has it check a connection before lending it (after
        # Postgres restarted, every one it kept is dead, and lending it would answer 503)
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": options,
    }


_db = _site.get("database", {})
# Audit rows live in their own database (the seed: "stored separately"). Without an
# [audit_database] section it is "<name>_audit" on the same server, same login role.
_audit_db = {**_db, "name": f"{_db.get('name', '')}_audit", **_site.get("audit_database", {})}
DATABASES = {
    "default": _database(_db, "db_password", None),
    "audit": _database(_audit_db, "audit_db_password", config.read_secret("db_password")),
}

_redis = _site.get("redis", {})
if not _redis.get("ssl_ca_certs"):
    raise ImproperlyConfigured("server.toml [redis] ssl_ca_certs is missing (Redis is TLS-only)")
if _redis.get("ssl_min_version", "TLSv1_3") != "TLSv1_3":
    raise ImproperlyConfigured("server.toml [redis] ssl_min_version can only be TLSv1_3")
CMDOP_REDIS = {
    "host": _redis.get("host", "127.0.0.1"),
    "port": int(_redis.get("port", 6379)),
    "username": _redis.get("username", "app"),
    "password": config.read_secret("redis_password"),
    "ssl": True,
    "ssl_ca_certs": _redis["ssl_ca_certs"],
    "ssl_cert_reqs": "required",
    "ssl_check_hostname": True,
    "ssl_min_version": ssl.TLSVersion.TLSv1_3,
}
if _redis.get("ssl_certfile"):
    CMDOP_REDIS |= {"ssl_certfile": _redis["ssl_certfile"], "ssl_keyfile": _redis["ssl_keyfile"]}
CMDOP_REDIS_KEY_PREFIX = _redis.get("key_prefix", "app:")

_tokens = _site.get("tokens", {})
CMDOP_ACCESS_TOKEN_TTL = int(_tokens.get("access_ttl_seconds", 3600))
CMDOP_REFRESH_TOKEN_TTL = int(_tokens.get("refresh_ttl_days", 30)) * 24 * 3600
CMDOP_RATE_LIMITS = CMDOP_RATE_LIMITS | dict(_site.get("rate_limits", {}))  # noqa: F405
CMDOP_SESSION_IDLE_TIMEOUT = int(_site.get("sessions", {}).get("idle_timeout_seconds", 1800))
CMDOP_AUDIT_RETENTION_DAYS = int(_site.get("audit", {}).get("retention_days", 90))
CMDOP_DB_POOL_THREADS = int(_db.get("pool_threads", CMDOP_DB_POOL_THREADS))  # noqa: F405

_metrics = _site.get("metrics", {})
CMDOP_METRICS_ALLOWED_SOURCES = list(_metrics.get("allowed_sources", []))
for _source in CMDOP_METRICS_ALLOWED_SOURCES:
    if not netinfo.is_network(_source):
        raise ImproperlyConfigured(f"server.toml [metrics] allowed_sources: {_source!r} is not "
                                   "an address or network like 10.0.0.5 or 10.0.0.0/24")
# the workers' shared numbers live in gunicorn's runtime folder (gone when the service stops)
CMDOP_METRICS_DIR = _metrics.get("directory", "")
CMDOP_METRICS_CERTIFICATES = {
    name: path for name, path in (("ca", DATABASES["default"]["OPTIONS"]["sslrootcert"]),
                                  ("redis_client", CMDOP_REDIS.get("ssl_certfile", "")))
    if path}

# Realtime and agent knobs (issue 5). Centrifugo is optional: disabled, the REST cursor API
# carries everything and no Centrifugo secret is read.
_centrifugo = _site.get("centrifugo", {})
CMDOP_CENTRIFUGO: dict = {}
if _centrifugo.get("enabled"):
    # the model: TLS 1.3 to Centrifugo with the internal PKI, and no option to disable TLS
    if not str(_centrifugo.get("api_url", "")).startswith("https://"):
        raise ImproperlyConfigured("server.toml [centrifugo] api_url must be https:// "
                                   "(TLS 1.3, verified against ssl_ca_certs)")
    CMDOP_CENTRIFUGO = {
        "api_url": _centrifugo["api_url"],
        "ws_url": _centrifugo.get("ws_url", ""),
        "ca_file": _centrifugo.get("ssl_ca_certs"),
        "audience": _centrifugo.get("token_audience", ""),
        "issuer": _centrifugo.get("token_issuer", ""),
        "api_key": config.read_secret("centrifugo_api_key"),
        "hmac_secret": config.read_secret("centrifugo_hmac_key"),
    }
CMDOP_SESSION_OUTPUT_MAX_BYTES = int(_site.get("agent", {}).get("output_limit_kb", 1024)) * 1024
