"""The user API (/api/v1/) as ``cmdop`` calls it: one workspace, one credential (an API key
or the login's refreshing access token), sessions, commands and files."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlencode

from .. import __version__
from ..errors import AgentError, ServerError
from ..oauth import TokenKeeper
from ..transport import HttpsClient
from ..vault import Vault
from ..websocket import HandshakeRefused, WebSocket
from .settings import Settings, save_login

API = "/api/v1"
CLIENT_ID = "cmdop-cli"
OUTPUT_WAIT = 25  # the server's longest output long-poll
MAX_WRITE_BYTES = 540 * 1024  # data_b64 of a file write is at most 720 KiB
MAX_INPUT_BYTES = 4096  # one session.input work item

Shown = Callable[[str, bytes], None]  # a command's output as it comes: (stream, bytes)


def https_client(settings: Settings) -> HttpsClient:
    return HttpsClient(settings.server, settings.ca_file, user_agent=f"cmdop/{__version__}")


def keeper(settings: Settings, login: dict) -> TokenKeeper:
    return TokenKeeper(login, lambda value: save_login(settings.login_file, value),
                       Vault(settings.key_dir, "cmdop login"), lambda: https_client(settings),
                       CLIENT_ID, "run cmdop login")


class UserApi:
    """Authenticated calls on one connection; ``fork()`` gives another (one per thread)."""

    def __init__(self, settings: Settings, login: dict | None,
                 tokens: TokenKeeper | None = None) -> None:
        self.settings = settings
        self.client = https_client(settings)
        if settings.api_key is None and login is None:
            raise AgentError("not logged in: run cmdop login --server URL, or set "
                             "CMDOP_API_KEY")
        self.tokens = tokens or (keeper(settings, login) if login is not None else None)
        self._slug = settings.workspace

    def fork(self) -> UserApi:
        twin = UserApi(self.settings, self.tokens.cred if self.tokens else None, self.tokens)
        twin._slug = self._slug
        return twin

    def close(self) -> None:
        self.client.close()

    def bearer(self) -> str:
        return self.tokens.token() if self.tokens else str(self.settings.api_key)

    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float | None = None, raw: bool = False) -> object:
        def once() -> object:
            send = self.client.request_bytes if raw else self.client.request_json
            return send(method, API + path, body=body, token=self.bearer(), timeout=timeout)

        try:
            return once()
        except ServerError as exc:
            if exc.status != 401:
                raise
            if self.tokens is None:
                raise AgentError("the API key was refused (revoked or mistyped)") from None
            self.tokens.expired()
            try:
                return once()
            except ServerError as again:
                if again.status == 401:
                    raise AgentError("the login expired or was revoked; run cmdop login"
                                     ) from None
                raise

    # ---- the workspace --------------------------------------------------------------------

    def workspaces(self) -> list[dict]:
        rows = self.call("GET", "/workspaces")
        return rows if isinstance(rows, list) else []

    @property
    def slug(self) -> str:
        if self._slug is None:
            rows = self.workspaces()
            if len(rows) != 1:
                names = ", ".join(r["slug"] for r in rows) or "none"
                raise AgentError(f"name the workspace with --workspace (yours: {names})")
            self._slug = str(rows[0]["slug"])
        return self._slug

    def ws(self, method: str, path: str, body: dict | None = None,
           timeout: float | None = None) -> dict:
        reply = self.call(method, f"/workspaces/{quote(self.slug)}{path}", body, timeout)
        return reply if isinstance(reply, dict) else {}

    def ws_list(self, path: str) -> list[dict]:
        reply = self.call("GET", f"/workspaces/{quote(self.slug)}{path}")
        return reply if isinstance(reply, list) else []

    def machines(self) -> list[dict]:
        return self.ws_list("/machines")

    def machine(self, name: str) -> dict:
        """A machine by hostname or machine id."""
        rows = self.machines()
        found = [m for m in rows if name in (m["machine_id"], m["hostname"])]
        if not found:
            raise AgentError(f"no machine {name!r} in workspace {self.slug} "
                             "(cmdop machines lists them)")
        return found[0]

    def sessions(self) -> list[dict]:
        return self.ws_list("/sessions")

    def audit_export(self, since: str, until: str | None, fmt: str) -> bytes:
        query = urlencode({"since": since, "format": fmt, **({"until": until} if until else {})})
        reply = self.call("GET", f"/workspaces/{quote(self.slug)}/audit/export?{query}",
                          timeout=300, raw=True)
        return reply if isinstance(reply, bytes) else b""


class Session:
    """One session's operations and its output, read through the cursor API."""

    def __init__(self, api: UserApi, session_id: str) -> None:
        self.api, self.id = api, session_id
        self.cursor = ""
        self.path = f"/sessions/{session_id}"

    @classmethod
    def open(cls, api: UserApi, machine_name: str, cols: int = 80, rows: int = 24) -> Session:
        """A new session on the machine, once its agent reports the terminal open."""
        machine = api.machine(machine_name)
        if not machine.get("online"):
            raise AgentError(f"machine {machine['hostname']} is offline")
        reply = api.ws("POST", "/sessions", {"machine_id": machine["machine_id"],
                                            "cols": cols, "rows": rows})
        session = cls(api, reply["session_id"])
        # A pending session has no output to read yet (409): its status shows in the list.
        deadline, pause = time.monotonic() + 30, 0.02
        while time.monotonic() < deadline:
            mine = [s for s in api.sessions() if s["session_id"] == session.id]
            status = mine[0]["status"] if mine else "missing"
            if status == "connected":
                return session
            if status != "pending":
                raise AgentError(f"the session did not open ({status})")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
        raise AgentError(f"the agent on {machine['hostname']} did not open a session in 30 s")

    def info(self) -> dict:
        return self.api.ws("GET", self.path)

    def read(self, wait: float = OUTPUT_WAIT) -> list[dict]:
        query = f"?wait={wait:g}" + (f"&cursor={self.cursor}" if self.cursor else "")
        page = self.api.ws("GET", f"{self.path}/output{query}", timeout=wait + 30)
        self.cursor = page.get("cursor", self.cursor)
        return list(page.get("items", []))

    def follow(self) -> Iterator[dict]:
        while True:
            yield from self.read()

    def result(self, work_id: str, kind: str, show: Shown | None = None) -> dict:
        """The record of ``kind`` (or a work.error) for ``work_id``; its ``command.output``
        records on the way go to ``show`` (stream name, bytes) as they are read."""
        for item in self.follow():
            if item.get("work_id") != work_id:
                if item["type"] == "status" and item["status"] not in ("connected",
                                                                      "background"):
                    raise AgentError(f"the session ended ({item['status']})")
                continue
            if item["type"] == kind:
                return item
            if item["type"] == "command.output" and show is not None:
                show(str(item.get("stream")), base64.b64decode(item.get("data_b64") or ""))
                continue
            if item["type"] in ("work.error", "agent.dropped"):
                raise AgentError(f"the agent refused: {item.get('error', item['type'])}: "
                                 f"{item.get('detail', '')}")
        raise AssertionError("unreachable: follow() never ends")

    def send(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_INPUT_BYTES):
            chunk = data[start:start + MAX_INPUT_BYTES]
            self.api.ws("POST", f"{self.path}/input",
                        {"data_b64": base64.b64encode(chunk).decode()})

    def resize(self, cols: int, rows: int) -> None:
        self.api.ws("POST", f"{self.path}/resize", {"cols": cols, "rows": rows})

    def terminal_socket(self) -> WebSocket | None:
        """The session's terminal WebSocket (keys, output and resizes on one connection),
        or None from a control plane older than it: there the route takes only a browser's
        session cookie and refuses a bearer's handshake before it opens (403)."""
        path = f"/w/{quote(self.api.slug)}/sessions/{quote(self.id)}/terminal"
        try:
            return WebSocket.connect(https_client(self.api.settings), path, self.api.bearer())
        except HandshakeRefused as exc:
            if exc.status == 403:
                return None
            raise

    def command(self, command: str, timeout: int, show: Shown) -> dict:
        """Run ``command``; its output goes to ``show`` while it runs (an agent that does not
        stream puts all of it in the result instead)."""
        work = self.api.ws("POST", f"{self.path}/commands",
                           {"command": command, "timeout": timeout, "stream": True})
        return self.result(work["work_id"], "command.result", show)

    def read_file(self, path: str) -> dict:
        work = self.api.ws("POST", f"{self.path}/files/read", {"path": path})
        return self.result(work["work_id"], "file.result")

    def write_file(self, path: str, data: bytes) -> dict:
        if len(data) > MAX_WRITE_BYTES:
            raise AgentError(f"{len(data)} bytes is more than one write can carry "
                             f"({MAX_WRITE_BYTES})")
        work = self.api.ws("POST", f"{self.path}/files/write",
                           {"path": path, "data_b64": base64.b64encode(data).decode()})
        return self.result(work["work_id"], "file.result")

    def detach(self) -> None:
        self.api.ws("POST", f"{self.path}/attachment", {"attached": False})

    def attach(self) -> None:
        self.api.ws("POST", f"{self.path}/attachment", {"attached": True})

    def close(self) -> None:
        self.api.ws("POST", f"{self.path}/close")


def with_session(api: UserApi, machine_name: str, work: Callable[[Session], int]) -> int:
    """Run ``work`` in a session of its own on the machine, closed afterwards."""
    session = Session.open(api, machine_name)
    try:
        return work(session)
    finally:
        try:
            session.close()
        except AgentError:
            pass  # the work's own outcome (or error) is what the user needs to see
