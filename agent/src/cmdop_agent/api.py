"""The agent side of docs/agent-protocol.md: one method per endpoint; tokens via oauth.py."""

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
from .oauth import REFRESH_MARGIN, TokenKeeper, device_flow
from .transport import HttpsClient
from .vault import Vault

__all__ = ["REFRESH_MARGIN", "AgentApi", "Auth", "enroll_with_join_token",
           "login_with_device_flow"]

AGENT = "/api/agent/v1"
CLIENT_ID = "cmdop-agent"


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
    """RFC 8628 (oauth.device_flow), then enroll this machine with the access token."""
    _preflight(config, key_dir=True)
    client = HttpsClient(config.server, config.ca_file)
    tokens = device_flow(client, CLIENT_ID, "agent", "connect this machine", show, sleep)
    body: dict[str, str] = host_facts()
    if workspace:
        body["workspace"] = workspace  # needed when the user belongs to several workspaces
    reply = client.request("POST", f"{AGENT}/enroll", body=body, token=tokens["access_token"])
    cred = {"kind": "oauth", "server": config.server, "machine_id": reply["machine_id"],
            "workspace": reply.get("workspace")}
    _keeper(config, cred).store(tokens)
    return cred


def _keeper(config: Config, cred: dict, clock: Callable[[], float] = time.time) -> TokenKeeper:
    return TokenKeeper(cred, lambda c: save_credential(config, c),
                       Vault(config.key_dir, "cmdop-agent login"),
                       lambda: HttpsClient(config.server, config.ca_file), CLIENT_ID,
                       "run cmdop-agent login again", clock)


class Auth:
    """Hands out the bearer token: the machine credential, or the OAuth access token that
    the shared TokenKeeper refreshes before it expires."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.cred = load_credential(config)
        self._keeper = None if self.cred["kind"] == "machine" else _keeper(config, self.cred,
                                                                           clock)
        self._lock = threading.Lock()

    def token(self) -> str:
        if self._keeper is None:
            with self._lock:
                return self.cred["credential"]
        return self._keeper.token()

    def adopt(self, credential: str) -> None:
        """Take the new machine credential of a handover: on disk first (0600, atomically),
        so that an agent restarted from here on presents the new one, then in use. Using it
        is what confirms it; until then the control plane still takes the old one."""
        if self._keeper is not None:
            raise AgentError("the control plane sent a machine credential to an OAuth login")
        with self._lock:
            save_credential(self.config, {**self.cred, "credential": credential})
            self.cred = {**self.cred, "credential": credential}

    def expired(self) -> None:
        """The server said 401: refresh now if we can, else the credential is dead."""
        if self._keeper is None:
            raise AgentError("the machine credential was rejected (revoked?); enroll again")
        self._keeper.expired()


class AgentApi:
    """Authenticated calls for one thread (each thread has its own connection)."""

    def __init__(self, config: Config, auth: Auth) -> None:
        self.client = HttpsClient(config.server, config.ca_file)
        self.auth = auth

    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float | None = None) -> dict:
        token = self.auth.token()
        try:
            return self.client.request(method, AGENT + path, body=body, token=token,
                                       timeout=timeout)
        except ServerError as exc:
            if exc.status != 401:
                raise
            # another thread renewed the credential while this request was on its way (the
            # old one is refused once the new one is used): retry with it, nothing expired
            if self.auth.token() == token:
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
