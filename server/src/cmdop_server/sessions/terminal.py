"""A terminal's one long-lived connection: a WebSocket at
``/w/<slug>/sessions/<session id>/terminal`` (gunicorn's asgi worker speaks RFC 6455; nginx
passes the Upgrade through), for the browser's page and for ``cmdop connect``.

Who attaches, by what the handshake carries:

- ``Authorization: Bearer`` — ``cmdop``: an API key or a device-flow access token, checked as
  the user API checks it (scope "api"; an API key only in its own workspace, 404 elsewhere);
  a refused one counts against the client's auth rate limit and is audited. No Origin is
  asked for: a header credential is no ambient authority, a page elsewhere cannot make a
  browser send it (a WebSocket from a page carries no headers of the page's choosing).
- the session cookie — a browser: only with an Origin of this site (a page elsewhere could
  otherwise ride the cookie).

Attach is authorized as every page is: that user, a guest only where the workspace has guests
enabled, the workspace role table for SESSION_VIEW and ``authz.authorize`` for VIEW_OUTPUT.
The same check, the credential included, runs again every ``RECHECK_SECONDS`` — sign-out, a
revoked key or token, a removed membership, a changed role, guests disabled or a session that
is no longer active end or narrow the open terminal within seconds.
A bearer client renews its access token on the open socket (a ``credential`` message with
the refreshed token of the same user) instead of reattaching.

Frames: binary from the client are keystrokes and pastes (operators only; an observer's
are refused here, audited once per connection, whatever its page did); binary to the
client are the PTY's bytes. Text frames are JSON: ``resize``, ``close`` and ``credential``
from the client; ``status``, ``refused``, ``throttled`` and the session's records to it.

Rate limits as the seed means them: attaching is one session operation, a burst of resizes
is one, closing is one; keystrokes are bounded by a byte rate (``input_bytes``), and output
is not counted at all (it is pushed, not asked for).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest

from cmdop_server import audit, dbconn, netinfo, output, ratelimit
from cmdop_server.api.auth import refuse_bearer, refuse_disabled_guest
from cmdop_server.errors import ApiError
from cmdop_server.identity.authn import authenticate_bearer
from cmdop_server.identity.models import Membership, User
from cmdop_server.permissions import Action, can
from cmdop_server.sessions import actions
from cmdop_server.sessions.authz import SessionAccess, SessionPermission, authorize
from cmdop_server.sessions.models import Session, SessionRole, Status
from cmdop_server.workqueue import BadCursor

PATH = re.compile(r"^/w/(?P<slug>[-a-zA-Z0-9_]+)/sessions/(?P<session>[-a-zA-Z0-9_]+)/terminal$")
RECHECK_SECONDS = 2.0
PENDING_WAIT_SECONDS = 60.0
# resizes closer together than this are one burst: one session operation
RESIZE_BURST_SECONDS = 5.0
OUTPUT_WAIT_SECONDS = 20.0
# close codes (4000-4999 are the application's): the page says why the terminal stopped
CLOSE_ENDED, CLOSE_REFUSED, CLOSE_UNAUTHENTICATED = 4000, 4403, 4401
ENDED_STATUSES = frozenset({Status.CLOSED, Status.DISCONNECTED})

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def _off_loop(fn):
    """Redis work (rate limits, the machine's work stream) off the event loop."""
    return sync_to_async(fn, thread_sensitive=False)


def _in_pool(fn):
    """DB work on the worker's few long-lived database threads (dbconn.in_pool): an attached
    terminal holds no connection of its own between checks."""
    return dbconn.in_pool(fn)


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _client_ip(scope: dict, headers: dict[str, str]) -> str | None:
    """The address nginx accepted the browser from, by netinfo's rule for requests."""
    request = HttpRequest()
    client = scope.get("client")
    request.META["REMOTE_ADDR"] = client[0] if client else ""
    request.META["HTTP_X_FORWARDED_FOR"] = headers.get("x-forwarded-for", "")
    return netinfo.client_ip(request) or None


def same_origin(headers: dict[str, str]) -> bool:
    """The page that opens the socket is one of ours: its Origin is a trusted origin or the
    Host it connects to. Browsers always send Origin on a WebSocket handshake."""
    origin = headers.get("origin", "")
    if origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    return bool(origin) and urlsplit(origin).netloc == headers.get("host")


@dataclass(frozen=True)
class Credential:
    """What the handshake carried: a browser's session key or a client's bearer credential."""
    session_key: str | None = None
    bearer: str | None = None


def credential_of(headers: dict[str, str]) -> Credential | None:
    """The credential to attach with, or None (the handshake is refused): a bearer in the
    Authorization header, else the session cookie from a page of this site."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme:
        token = token.strip()
        return Credential(bearer=token) if scheme.lower() == "bearer" and token else None
    morsel = SimpleCookie(headers.get("cookie", "")).get(settings.SESSION_COOKIE_NAME)
    if morsel is None or not same_origin(headers):
        return None
    return Credential(session_key=morsel.value)


def _user(session_key: str) -> User | None:
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(request)
    return user if user.is_authenticated else None


@dataclass
class Check:
    """What one (re)check found: the access, or why there is none (``reason``: why a bearer
    credential was refused, for the audit row)."""
    access: SessionAccess | None = None
    pending: bool = False
    refused: ApiError | None = None
    reason: str = ""


BEARER_REFUSED = {"revoked_api_key": "The API key was revoked.",
                  "revoked_token": "The login was revoked.",
                  "expired_token": "The access token expired."}


def check(credential: Credential, slug: str, session_id: str, ip: str | None) -> Check:
    """The attach check, run again every RECHECK_SECONDS."""
    if credential.bearer is not None:
        principal, reason = authenticate_bearer(credential.bearer, "api")
        if principal is None:
            return Check(refused=ApiError(401, "unauthorized", BEARER_REFUSED.get(
                reason, "The credential was refused.")), reason=reason)
        # an API key acts in its own workspace only: another one is as missing as a stranger's
        if principal.workspace is not None and principal.workspace.slug != slug:
            return Check(refused=ApiError(404, "not_found", "No such session."))
        user: User | None = principal.user
    else:
        user = _user(credential.session_key or "")
    if user is None:
        return Check(refused=ApiError(401, "unauthorized", "You are signed out."))
    membership = (Membership.unscoped.select_related("workspace", "user")
                  .filter(workspace__slug=slug, user=user).first())
    if membership is None:
        return Check(refused=ApiError(404, "not_found", "No such session."))
    try:
        refuse_disabled_guest(membership)
    except ApiError as exc:
        return Check(refused=exc)
    if not can(membership.role, Action.SESSION_VIEW):
        return Check(refused=ApiError(403, "forbidden",
                                      f"Your role may not {Action.SESSION_VIEW}."))
    # pending is not a refusal: the terminal opens as soon as the agent accepts
    if Session.unscoped.filter(public_id=session_id, workspace=membership.workspace,
                               status=Status.PENDING).exists():
        return Check(pending=True)
    try:
        return Check(access=authorize(user, session_id, SessionPermission.VIEW_OUTPUT,
                                      workspace=membership.workspace, ip=ip,
                                      membership=membership))
    except ApiError as exc:
        return Check(refused=exc)


def bearer_refused_while_open(ip: str | None, reason: str) -> None:
    """An open terminal's credential stopped being valid (revoked, expired): audited as the
    API audits a refused bearer; no rate limit, the socket closes anyway."""
    audit.record("auth.bearer", success=False, method="bearer", ip=ip or "", reason=reason)


def renewal_refused(token: str, user_id: int) -> str:
    """Why ``token`` cannot replace the attached credential ("" when it is a valid access
    token of the user already attached: a refreshed one)."""
    principal, reason = authenticate_bearer(token, "api")
    if principal is None:
        return reason
    if principal.method != "access_token":
        return "not_an_access_token"
    return "" if principal.user.pk == user_id else "another_user"


def record_attach(access: SessionAccess, ip: str | None) -> None:
    audit.record("session.attach", user=access.membership.user,
                 workspace=access.session.workspace_id, ip=ip,
                 session=access.session.public_id, role=str(access.role))


def refuse_input(access: SessionAccess, ip: str | None) -> str:
    """An observer typed: the refusal is audited (authorize records it) and returned."""
    try:
        authorize(access.membership.user, access.session.public_id,
                  SessionPermission.SEND_INPUT, workspace=access.session.workspace_id, ip=ip,
                  membership=access.membership)
    except ApiError as exc:
        return exc.detail
    return ""


def deliver_input(access: SessionAccess, data: bytes) -> ratelimit.Decision:
    """Keystrokes count bytes against ``input_bytes``, not operations against ``session``."""
    decision = ratelimit.hit("input_bytes", f"user:{access.membership.user_id}",
                             amount=len(data))
    if decision.allowed:
        for start in range(0, len(data), actions.MAX_INPUT_BYTES):
            chunk = data[start:start + actions.MAX_INPUT_BYTES]
            actions.send_input(access, base64.b64encode(chunk).decode())
    return decision


def close_session(access: SessionAccess, ip: str | None) -> None:
    fresh = authorize(access.membership.user, access.session.public_id,
                      SessionPermission.MANAGE, workspace=access.session.workspace_id, ip=ip,
                      membership=access.membership)
    actions.do_close_session(fresh, ip)


def idle_close(access: SessionAccess, idle_seconds: int) -> None:
    """Nobody typed for the site's idle timeout: the session ends, audited."""
    audit.record("session.idle_timeout", user=access.membership.user,
                 workspace=access.session.workspace_id, session=access.session.public_id,
                 idle_seconds=idle_seconds)
    actions.do_close_session(access)


@dataclass
class Terminal:
    scope: dict
    receive: Receive
    send: Send
    slug: str
    session_id: str
    credential: Credential
    ip: str | None
    access: SessionAccess | None = None
    last_input: float = field(default_factory=time.monotonic)
    last_resize: float = 0.0
    observer_refused: bool = False

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send({"type": "websocket.send",
                         "text": json.dumps(message, separators=(",", ":"), default=str)})

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    async def attach(self) -> bool:
        """Until the session is active (the agent accepted) or refused; True when attached."""
        deadline = time.monotonic() + PENDING_WAIT_SECONDS
        announced = False
        while True:
            found = await _in_pool(check)(self.credential, self.slug, self.session_id, self.ip)
            if found.reason:
                await _in_pool(refuse_bearer)(self.ip or "", found.reason)
            if found.access is not None:
                self.access = found.access
                await _off_loop(ratelimit.enforce)(
                    "session", f"user:{found.access.membership.user_id}")
                await _in_pool(record_attach)(found.access, self.ip)
                await self.send_json({"type": "status", "status": found.access.session.status,
                                      "role": found.access.role})
                return True
            if found.refused is not None:
                await self.refused(found.refused)
                return False
            if not announced:
                await self.send_json({"type": "status", "status": Status.PENDING})
                announced = True
            if time.monotonic() > deadline:
                await self.send_json({"type": "refused",
                                      "detail": "The agent did not open the session."})
                await self.close(CLOSE_ENDED, "pending too long")
                return False
            await asyncio.sleep(0.25)

    async def refused(self, exc: ApiError) -> None:
        await self.send_json({"type": "refused", "detail": exc.detail, "code": exc.code})
        ended = exc.code == "session_not_active"
        await self.close(CLOSE_ENDED if ended else
                         CLOSE_UNAUTHENTICATED if exc.status == 401 else CLOSE_REFUSED,
                         exc.detail)

    async def pump_output(self) -> None:
        """The session's output from the oldest held (a reopened page sees it so far)."""
        assert self.access is not None
        cursor: str | None = None
        pk = self.access.session.pk
        while True:
            try:
                page = await output.read(pk, cursor, OUTPUT_WAIT_SECONDS)
            except BadCursor:
                cursor = None
                continue
            cursor = page.cursor
            # a page's consecutive output chunks go as one frame (fewer sends under load)
            pending = bytearray()
            for item in page.items:
                if item["type"] == "output":
                    pending += base64.b64decode(item["data_b64"])
                    continue
                if pending:
                    await self.send({"type": "websocket.send", "bytes": bytes(pending)})
                    pending.clear()
                await self.send_json(item)
            if pending:
                await self.send({"type": "websocket.send", "bytes": bytes(pending)})
            if not page.items:
                await self.send_json({"type": "alive"})  # keeps nginx and middleboxes open

    async def recheck(self) -> None:
        idle = settings.CMDOP_SESSION_IDLE_TIMEOUT
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            found = await _in_pool(check)(self.credential, self.slug, self.session_id, self.ip)
            if found.reason:
                await _in_pool(bearer_refused_while_open)(self.ip, found.reason)
            if found.access is None:
                await self.refused(found.refused or ApiError(
                    409, "session_not_active", "The session is pending."))
                return
            if self.access is None or found.access.role != self.access.role:
                await self.send_json({"type": "status", "status": found.access.session.status,
                                      "role": found.access.role})
            self.access = found.access
            # only an operator's terminal can idle: an observer never types
            if (idle and found.access.role == SessionRole.OPERATOR
                    and time.monotonic() - self.last_input > idle):
                await _in_pool(idle_close)(found.access, idle)
                await self.send_json({"type": "refused", "code": "idle_timeout",
                                      "detail": f"Closed after {idle // 60} idle minutes."})
                await self.close(CLOSE_ENDED, "idle timeout")
                return

    async def on_input(self, data: bytes) -> None:
        access = self.access
        assert access is not None
        if access.role != SessionRole.OPERATOR:
            if not self.observer_refused:
                self.observer_refused = True
                detail = await _in_pool(refuse_input)(access, self.ip)
                await self.send_json({"type": "refused", "code": "read_only", "detail": detail})
            return
        decision = await _off_loop(deliver_input)(access, data)
        if not decision.allowed:
            await self.send_json({"type": "throttled", "retry_after": decision.retry_after,
                                  "detail": "Input is over the site's byte rate."})
            return
        self.last_input = time.monotonic()

    async def on_message(self, text: str) -> None:
        access = self.access
        assert access is not None
        try:
            message = json.loads(text)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            await self.send_json({"type": "refused", "code": "bad_request",
                                  "detail": "A text frame is a JSON object with a type."})
            return
        if kind == "credential":
            await self.renew(message.get("token"))
            return
        if access.role != SessionRole.OPERATOR:
            return  # an observer's page neither resizes nor closes the shared terminal
        if kind == "resize":
            cols, rows = message.get("cols"), message.get("rows")
            if not (isinstance(cols, int) and isinstance(rows, int)
                    and 1 <= cols <= 1000 and 1 <= rows <= 1000):
                return
            now = time.monotonic()
            if now - self.last_resize > RESIZE_BURST_SECONDS:
                await _off_loop(ratelimit.enforce)("session", f"user:{access.membership.user_id}")
            self.last_resize = now
            await _off_loop(actions.resize)(access, cols, rows)
        elif kind == "close":
            await _off_loop(ratelimit.enforce)("session", f"user:{access.membership.user_id}")
            await _in_pool(close_session)(access, self.ip)

    async def renew(self, token: object) -> None:
        """A bearer client's refreshed access token replaces the one it attached with (the
        next recheck checks it); refused unless it is the same user's."""
        assert self.access is not None
        if self.credential.bearer is None:
            reason = "not_a_bearer_client"  # a browser attached with its cookie: no token
        elif not isinstance(token, str):
            reason = "malformed_token"
        else:
            reason = await _in_pool(renewal_refused)(token, self.access.membership.user_id)
            if not reason:
                self.credential = Credential(bearer=token)
                return
        # a refused token is a failed bearer authentication, as at the handshake: audited,
        # and counted against the client's auth rate limit (no guessing on an open socket)
        try:
            await _in_pool(refuse_bearer)(self.ip or "", reason)
        except ratelimit.RateLimitedError as exc:
            await self.send_json({"type": "throttled", "retry_after": exc.retry_after,
                                  "detail": "Too many refused credentials."})
            return
        await self.send_json({"type": "refused", "code": "bad_credential",
                              "detail": "Not a valid access token of the attached user."})

    async def read_browser(self) -> None:
        while True:
            event = await self.receive()
            if event["type"] == "websocket.disconnect":
                return
            try:
                if event.get("bytes"):
                    await self.on_input(event["bytes"])
                elif event.get("text"):
                    await self.on_message(event["text"])
            except ratelimit.RateLimitedError as exc:
                await self.send_json({"type": "throttled", "retry_after": exc.retry_after,
                                      "detail": "Too many session operations."})
            except ApiError as exc:
                await self.send_json({"type": "refused", "code": exc.code,
                                      "detail": exc.detail})

    async def run(self) -> None:
        await self.send({"type": "websocket.accept"})
        try:
            if not await self.attach():
                return
        except ratelimit.RateLimitedError as exc:
            await self.send_json({"type": "throttled", "retry_after": exc.retry_after,
                                  "detail": "Too many session operations."})
            await self.close(CLOSE_REFUSED, "rate limited")
            return
        tasks = [asyncio.ensure_future(t) for t in
                 (self.read_browser(), self.pump_output(), self.recheck())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.close(1000, "")


async def handle(scope: dict, receive: Receive, send: Send) -> None:
    """The ASGI app for one terminal WebSocket (asgi.py routes the path here)."""
    match = PATH.match(scope["path"])
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    headers = _headers(scope)
    credential = credential_of(headers)
    if match is None or credential is None:
        # before accept: the handshake fails with 403, the page says it cannot connect
        await send({"type": "websocket.close", "code": CLOSE_REFUSED})
        return
    terminal = Terminal(scope, receive, send, match["slug"], match["session"], credential,
                        _client_ip(scope, headers))
    await terminal.run()


def route_terminal(app):
    """Wrap the project's ASGI app: WebSockets go to the terminal (Django serves none)."""
    async def application(scope, receive, send):
        if scope["type"] == "websocket":
            return await handle(scope, receive, send)
        return await app(scope, receive, send)

    return application
