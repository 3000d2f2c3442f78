"""CMDOP's own security defaults as Django system checks (run by ``check --deploy``).

cmdop.W001 DEBUG on · W002 Redis without verified TLS 1.3 · W003 a database without
sslmode=verify-full · W004 audit not in its own database · W005 public URL not https ·
W006 test API keys (cmd_test_) on a production site · W007 a rate limit that does not parse.
"""

from __future__ import annotations

import ssl

from django.conf import settings
from django.core.checks import Tags, Warning, register

from cmdop_server.ratelimit import parse_rate


def _w(n: int, msg: str, hint: str) -> Warning:
    return Warning(msg, hint=hint, id=f"cmdop.W{n:03d}")


@register(Tags.security, deploy=True)
def cmdop_security(app_configs=None, **kwargs) -> list[Warning]:
    found = []
    if settings.DEBUG:
        found.append(_w(1, "DEBUG is on.", "Production settings never enable DEBUG."))
    r = settings.CMDOP_REDIS
    if not (r.get("ssl") and r.get("ssl_cert_reqs") == "required" and r.get("ssl_check_hostname")
            and r.get("ssl_min_version") == ssl.TLSVersion.TLSv1_3):
        found.append(_w(2, "Redis is not reached over verified TLS 1.3.",
                        "Set [redis] ssl_ca_certs in server.toml."))
    for alias, db in settings.DATABASES.items():
        if db.get("OPTIONS", {}).get("sslmode") != "verify-full":
            found.append(_w(3, f"Database {alias!r} does not use sslmode=verify-full.",
                            "Set [database] sslrootcert in server.toml."))
    dbs = settings.DATABASES
    if "audit" not in dbs or (
        (dbs["audit"].get("HOST"), dbs["audit"].get("PORT"), dbs["audit"].get("NAME"))
        == (dbs["default"].get("HOST"), dbs["default"].get("PORT"), dbs["default"].get("NAME"))
    ):
        found.append(_w(4, "Audit events are not stored in a separate database.",
                        "Configure [audit_database] with its own database name."))
    if not settings.CMDOP_PUBLIC_URL.startswith("https://"):
        found.append(_w(5, "The public URL is not https.", "Set [server] public_url."))
    if settings.CMDOP_API_KEY_PREFIX != "cmd_live_":
        found.append(_w(6, "This site issues test API keys.", "Only --dev issues cmd_test_."))
    for scope, rate in settings.CMDOP_RATE_LIMITS.items():
        try:
            parse_rate(rate)
        except (KeyError, ValueError):
            found.append(_w(7, f"Rate limit {scope}={rate!r} does not parse.",
                            'Write e.g. "10/min".'))
    return found
