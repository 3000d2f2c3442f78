"""The agent side of docs/agent-protocol.md: one method per endpoint, plus token upkeep."""

from __future__ import annotations

import platform
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlencode

from . import __version__
from .config import Config, load_credential, save_credential
from .errors import AgentError, ServerError
from .files import check_private, ensure_private_dir
from .transport import HttpsClient
from .vault import Vault

AGENT = "/api/agent/v1"
OAUTH = "/api/v1/oauth"
CLIENT_ID = "cmdop-agent"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_MARGIN = 300  # seconds before expiry (the seed: "5 minutes before expiration")


def host_facts() -> dict[str, str]:
    u = platform.uname()
    return {"hostname": socket.gethostname(), "os": f"{u.system} {u.release} {u.machine}",
            "version": __version__}


def _preflight(config: Config, key_dir: bool = False) -> None:
    """Fail before talking to the server (a join token is single-use) if we could not store
    what it gives us."""
    ensure_private_dir(config.credential_file.parent)
    if config.credential_file.exists():
        check_private(config.credential_file)
    if key_dir:
        ensure_private_dir(config.key_dir)


def enroll_with_join_token(config: Config, token: str) -> dict:
    _preflight(config)
    client = HttpsClient(config.server, config.ca_file)
    reply = client.request("POST", f"{AGENT}/enroll", body={"join_token": token, **host_facts()})
    cred = {"kind": "machine", "server": config.server, "machine_id": reply["machine_id"],
            "workspace": reply.get("workspace"), "credential": reply["credential"]}
    save_credential(config, cred)
    return cred


def login_with_device_flow(
    config: Config, show: Callable[[str], None], sleep: Callable[[float], None] = time.sleep,
    workspace: str | None = None,
) -> dict:
    """RFC 8628: print where to go, poll honouring interval and slow_down, then enroll."""
    _preflight(config, key_dir=True)
    client = HttpsClient(config.server, config.ca_file)
    grant = client.request("POST", f"{OAUTH}/device_authorization",
                           form={"client_id": CLIENT_ID, "scope": "agent"})
    show(f"To connect this machine, open {grant['verification_uri']} "
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
            tokens = client.request("POST", f"{OAUTH}/token", form={
                "grant_type": DEVICE_GRANT, "device_code": grant["device_code"],
                "client_id": CLIENT_ID})
            break
        except ServerError as exc:
            if exc.code == "authorization_pending":
                continue
            if exc.code == "slow_down":
                interval += 5
                continue
            if exc.code in ("access_denied", "expired_token"):
                raise AgentError(f"login was not approved ({exc.code})") from None
            raise
    body: dict[str, str] = host_facts()
    if workspace:
        body["workspace"] = workspace  # needed when the user belongs to several workspaces
    reply = client.request("POST", f"{AGENT}/enroll", body=body, token=tokens["access_token"])
    cred = {"kind": "oauth", "server": config.server, "machine_id": reply["machine_id"],
            "workspace": reply.get("workspace")}
    _store_tokens(config, cred, tokens)
    return cred


def _store_tokens(config: Config, cred: dict, tokens: dict) -> None:
    cred["access_token"] = tokens["access_token"]
    cred["access_expires_at"] = time.time() + float(tokens.get("expires_in", 3600))
    if tokens.get("refresh_token"):
        cred["refresh_token_sealed"] = Vault(config.key_dir).seal(tokens["refresh_token"])
    save_credential(config, cred)


class Auth:
    """Hands out the bearer token; refreshes OAuth access tokens before they expire."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.cred = load_credential(config)
        self._clock = clock
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self.cred["kind"] == "machine":
                return self.cred["credential"]
            if self._clock() >= self.cred.get("access_expires_at", 0) - REFRESH_MARGIN:
                self._refresh()
            return self.cred["access_token"]

    def expired(self) -> None:
        """The server said 401: refresh now if we can, else the credential is dead."""
        with self._lock:
            if self.cred["kind"] == "machine":
                raise AgentError("the machine credential was rejected (revoked?); enroll again")
            self._refresh()

    def _refresh(self) -> None:
        refresh = Vault(self.config.key_dir).open(self.cred["refresh_token_sealed"])
        client = HttpsClient(self.config.server, self.config.ca_file)
        try:
            tokens = client.request("POST", f"{OAUTH}/token", form={
                "grant_type": "refresh_token", "refresh_token": refresh, "client_id": CLIENT_ID})
        except ServerError as exc:
            if exc.status in (400, 401):
                raise AgentError(f"token refresh refused ({exc.code}); run cmdop-agent login "
                                 "again") from None
            raise
        finally:
            client.close()
        _store_tokens(self.config, self.cred, tokens)


class AgentApi:
    """Authenticated calls for one thread (each thread has its own connection)."""

    def __init__(self, config: Config, auth: Auth) -> None:
        self.client = HttpsClient(config.server, config.ca_file)
        self.auth = auth

    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float | None = None) -> dict:
        try:
            return self.client.request(method, AGENT + path, body=body,
                                       token=self.auth.token(), timeout=timeout)
        except ServerError as exc:
            if exc.status != 401:
                raise
            self.auth.expired()
            return self.client.request(method, AGENT + path, body=body,
                                       token=self.auth.token(), timeout=timeout)

    def heartbeat(self, boot_id: str, sessions: int) -> dict:
        return self.call("POST", "/heartbeat", {**host_facts(), "boot_id": boot_id,
                                                "sessions": sessions})

    def poll(self, cursor: str | None, wait: int) -> dict:
        params = {"wait": wait, **({"cursor": cursor} if cursor else {})}
        return self.call("GET", "/work?" + urlencode(params), timeout=wait + 10)

    def ack(self, ids: list[str]) -> dict:
        return self.call("POST", "/work/ack", {"ids": ids})

    def post_events(self, boot_id: str, events: list[dict]) -> dict:
        return self.call("POST", "/events", {"boot_id": boot_id, "events": events})

    def close(self) -> None:
        self.client.close()
