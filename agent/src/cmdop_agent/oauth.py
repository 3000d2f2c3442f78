"""OAuth for both commands (``cmdop-agent`` and ``cmdop``): the device flow (RFC 8628),
the token store that refreshes 5 minutes early, and revocation (RFC 7009).

A login is a JSON credential in a 0600 file: the access token and its expiry in clear (the
seed's token table: "memory / secure file"), the refresh token sealed by ``Vault``. The
owner of the file (the agent's config, the person's ~/.cmdop) supplies how to save it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .errors import AgentError, ServerError
from .transport import HttpsClient
from .vault import Vault

OAUTH = "/api/v1/oauth"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_MARGIN = 300  # seconds before expiry (the seed: "5 minutes before expiration")


def device_flow(client: HttpsClient, client_id: str, scope: str, purpose: str,
                show: Callable[[str], None], sleep: Callable[[float], None] = time.sleep,
                ) -> dict:
    """RFC 8628: print where to go, poll honouring interval and slow_down; the token reply."""
    grant = client.request("POST", f"{OAUTH}/device_authorization",
                           form={"client_id": client_id, "scope": scope})
    show(f"To {purpose}, open {grant['verification_uri']} "
         f"and enter the code {grant['user_code']}")
    if grant.get("verification_uri_complete"):
        show(f"(or open {grant['verification_uri_complete']})")
    interval = float(grant.get("interval", 5))
    deadline = time.monotonic() + float(grant.get("expires_in", 900))
    while True:
        if time.monotonic() > deadline:
            raise AgentError("the device code expired before it was approved; run login again")
        sleep(interval)
        try:
            return client.request("POST", f"{OAUTH}/token", form={
                "grant_type": DEVICE_GRANT, "device_code": grant["device_code"],
                "client_id": client_id})
        except ServerError as exc:
            if exc.code == "authorization_pending":
                continue
            if exc.code == "slow_down":
                interval += 5
                continue
            if exc.code in ("access_denied", "expired_token"):
                raise AgentError(f"login was not approved ({exc.code})") from None
            raise


class TokenKeeper:
    """Hands out the access token of one login; refreshes it 5 minutes before it expires
    (and once more when the server says 401), one refresh at a time: the server treats a
    second use of a refresh token as theft and revokes the whole login."""

    def __init__(self, cred: dict, save: Callable[[dict], None], vault: Vault,
                 connect: Callable[[], HttpsClient], client_id: str, relogin: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.cred = cred
        self._save = save
        self._vault = vault
        self._connect = connect
        self._client_id = client_id
        self._relogin = relogin
        self._clock = clock
        self._lock = threading.Lock()

    def store(self, tokens: dict) -> None:
        self.cred["access_token"] = tokens["access_token"]
        self.cred["access_expires_at"] = self._clock() + float(tokens.get("expires_in", 3600))
        if tokens.get("refresh_token"):
            self.cred["refresh_token_sealed"] = self._vault.seal(tokens["refresh_token"])
        self._save(self.cred)

    def token(self) -> str:
        with self._lock:
            if self._clock() >= self.cred.get("access_expires_at", 0) - REFRESH_MARGIN:
                self._refresh()
            return self.cred["access_token"]

    def expired(self) -> None:
        """The server refused the access token (401): refresh now, or the login is dead."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        refresh = self._vault.open(self.cred["refresh_token_sealed"])
        client = self._connect()
        try:
            tokens = client.request("POST", f"{OAUTH}/token", form={
                "grant_type": "refresh_token", "refresh_token": refresh,
                "client_id": self._client_id})
        except ServerError as exc:
            if exc.status in (400, 401):
                raise AgentError(f"the login expired or was revoked ({exc.code}); "
                                 f"{self._relogin}") from None
            raise
        finally:
            client.close()
        self.store(tokens)

    def revoke(self) -> None:
        """RFC 7009: revoking the refresh token ends its whole family (the access token too)."""
        client = self._connect()
        try:
            client.request("POST", f"{OAUTH}/revoke",
                           form={"token": self._vault.open(self.cred["refresh_token_sealed"]),
                                 "token_type_hint": "refresh_token"})
        finally:
            client.close()
