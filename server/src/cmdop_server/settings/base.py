"""Settings shared by every mode. Nothing here reads the environment or the disk."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "cmdop_server.identity",
    "cmdop_server.audit",
    "cmdop_server.machines",
    "cmdop_server.sessions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "cmdop_server.netinfo.ClientAddressMiddleware",
    "cmdop_server.web.csp.ContentSecurityPolicyMiddleware",
    "cmdop_server.errors.ApiErrorMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "cmdop_server.urls"
WSGI_APPLICATION = "cmdop_server.wsgi.application"
AUTH_USER_MODEL = "identity.User"
DATABASE_ROUTERS = ["cmdop_server.audit.router.AuditRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [PACKAGE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
     "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "/static/"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

# Request bodies: the agent protocol's 1 MiB cap (docs/agent-protocol.md).
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# Browser hardening shared by every mode (transport settings live per mode).
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Scripts and styles only from our own files (no inline script or style, no eval, nothing
# from another origin), fetch only to ourselves, forms post only to ourselves, and no page
# may be framed (clickjacking).
CMDOP_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = 12 * 3600

# CMDOP's own knobs; the site config may override the rates (server.toml [rate_limits]).
# session: operations (open, join, close, a burst of resizes, commands, participants), not
# keystrokes; input_bytes: what an attached terminal types and pastes, in bytes
CMDOP_RATE_LIMITS = {"auth": "10/min", "session": "100/min", "file": "50/min",
                     "input_bytes": "1048576/min"}
# an operator's browser terminal with no keystroke for this long ends its session (0: never)
CMDOP_SESSION_IDLE_TIMEOUT = 30 * 60
CMDOP_API_KEY_PREFIX = "cmd_live_"
CMDOP_ACCESS_TOKEN_TTL = 3600
CMDOP_REFRESH_TOKEN_TTL = 30 * 24 * 3600
CMDOP_DEVICE_CODE_TTL = 900
CMDOP_DEVICE_POLL_INTERVAL = 5
CMDOP_LAST_USED_RESOLUTION = 60
CMDOP_AUDIT_RETENTION_DAYS = 90
CMDOP_TRUSTED_PROXIES: list[str] = []
# threads per worker whose DB connections persist (cmdop_server.dbconn), per database
CMDOP_DB_POOL_THREADS = 4
CMDOP_PUBLIC_URL = ""
# the keys TOTP secrets are sealed with at rest, newest first (cmdop_server.sealing)
CMDOP_TOTP_KEYS: list[str] = []
# /metrics (cmdop_server.metrics): the networks it answers (none: refused to everyone), the
# folder where each gunicorn worker leaves its numbers for the others ("": this process's
# numbers only), and the certificates whose expiry it reports (name -> PEM file)
CMDOP_METRICS_ALLOWED_SOURCES: list[str] = []
CMDOP_METRICS_DIR = ""
CMDOP_METRICS_CERTIFICATES: dict[str, str] = {}
CMDOP_REDIS: dict = {}
# every Redis key starts with this (the site's Redis ACL allows nothing else)
CMDOP_REDIS_KEY_PREFIX = "app:"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
