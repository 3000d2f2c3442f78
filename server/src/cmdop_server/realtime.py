"""The one module that talks to Centrifugo: token minting and publishing after commit.

Settings (``CMDOP_CENTRIFUGO``; empty = Centrifugo absent, everything still works through
the REST cursor API)::

    {"api_url": "https://cf.internal:9000/api", "api_key": "...", "ws_url": "wss://…",
     "hmac_secret": "...", "ca_file": "/etc/cmdop/pki/ca.crt", "token_ttl": 900,
     "audience": "centrifugo", "issuer": "cmdop"}

Channels are ``session:<public id>`` in the ``session`` namespace, which the installer
renders with ``allow_subscribe_for_client: false`` and every ``allow_publish_*`` false:
a browser can subscribe only with a subscription token minted here for a participant, and
nobody but the control plane (HTTP API key) can publish. Tokens are HS256 JWTs with the
claims Centrifugo v5/v6 read (REFERENCE.md §1): ``sub``, ``exp``, ``iat``, ``jti`` (+
``aud``/``iss`` when configured) and, for subscription tokens, ``channel``.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import time
import urllib.request

import jwt
from django.conf import settings
from django.db import transaction

logger = logging.getLogger("cmdop.realtime")

NAMESPACE = "session"
DEFAULT_TTL = 900
PUBLISH_TIMEOUT = 2.0


def _config() -> dict:
    return dict(getattr(settings, "CMDOP_CENTRIFUGO", None) or {})


def enabled() -> bool:
    cfg = _config()
    return bool(cfg.get("hmac_secret"))


def websocket_url() -> str:
    return _config().get("ws_url", "")


def session_channel(session_public_id: str) -> str:
    return f"{NAMESPACE}:{session_public_id}"


def _claims(user_id: int, ttl: int | None) -> dict:
    cfg = _config()
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now,
              "exp": now + int(ttl or cfg.get("token_ttl", DEFAULT_TTL)),
              "jti": secrets.token_urlsafe(12)}
    if cfg.get("audience"):
        claims["aud"] = cfg["audience"]
    if cfg.get("issuer"):
        claims["iss"] = cfg["issuer"]
    return claims


def _sign(claims: dict) -> str:
    return jwt.encode(claims, _config()["hmac_secret"], algorithm="HS256")


def connection_token(user_id: int, ttl: int | None = None) -> str | None:
    """A connection JWT (no server-side ``channels``: subscriptions need their own token)."""
    if not enabled():
        return None
    return _sign(_claims(user_id, ttl))


def subscription_token(user_id: int, session_public_id: str, ttl: int | None = None) -> str | None:
    """A subscription JWT for one session's channel. Call it only after the session's
    authorization check (``sessions.authz.authorize``) passed for ``user_id``."""
    if not enabled():
        return None
    return _sign(_claims(user_id, ttl) | {"channel": session_channel(session_public_id)})


def publish(channel: str, data: dict) -> bool:
    """POST /api/publish now; False (logged, never raised) when Centrifugo is absent or down:
    live delivery is best effort, the REST cursor API is the record."""
    cfg = _config()
    if not cfg.get("api_url") or not cfg.get("api_key"):
        return False
    body = json.dumps({"channel": channel, "data": data}).encode()
    if not cfg["api_url"].startswith(("https://", "http://127.0.0.1", "http://[::1]")):
        logger.warning("centrifugo api_url must be https (or loopback http)")
        return False
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        cfg["api_url"].rstrip("/") + "/publish", data=body, method="POST",
        headers={"Content-Type": "application/json", "X-API-Key": cfg["api_key"]})
    context = ssl.create_default_context(cafile=cfg.get("ca_file"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3  # seed: TLS 1.3 to Centrifugo
    try:
        with urllib.request.urlopen(request, timeout=PUBLISH_TIMEOUT,  # noqa: S310 - config URL
                                    context=context) as response:
            reply = json.loads(response.read() or b"{}")
    except (OSError, ValueError) as exc:
        logger.warning("centrifugo publish failed: %s", type(exc).__name__)
        return False
    if reply.get("error"):
        logger.warning("centrifugo publish refused: code %s", reply["error"].get("code"))
        return False
    return True


def publish_on_commit(channel: str, data: dict, using: str = "default") -> None:
    """Publish once the current transaction commits (never for rolled-back state)."""
    if _config().get("api_url"):
        transaction.on_commit(lambda: publish(channel, data), using=using)
