"""The APIs' own ASGI handler: the same Django, URLs and views, without the browser
middleware (sessions, CSRF, auth, messages, clickjacking).

Django runs each sync hook of a ``MiddlewareMixin`` middleware through ``sync_to_async``:
with the browser stack that is ~16 thread hops per request, most of a poll's cost on two
cores. The agent protocol and the user API (``/api/v1/``) are bearer-only JSON — no view
under them reads a session, a cookie user or a CSRF token — so they need none of it; what
they do need — the 413/Content-Type/JSON-error rules of ``ApiErrorMiddleware``, the
security headers and the client's address for audit rows — stays. Browser pages (login,
device approval, dashboard) keep the full stack.

The agent's long-poll (``GET /api/agent/v1/work``, every agent about once in 25 s) goes to
``PollASGIHandler``: the same chain and view, with no thread at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.middleware.security import SecurityMiddleware
from django.test.utils import override_settings
from django.urls import set_script_prefix

AGENT_PREFIX = "/api/agent/v1/"
USER_API_PREFIX = "/api/v1/"
LEAN_PREFIXES = (AGENT_PREFIX, USER_API_PREFIX)
POLL_PATH = AGENT_PREFIX + "work"
# the cyclic collector's youngest generation (Python's default is 700): see tune_collector
GC_YOUNG_THRESHOLD = 50_000
AGENT_MIDDLEWARE = [
    "cmdop_server.agent_api.asgi.InlineSecurityMiddleware",
    "cmdop_server.web.csp.ContentSecurityPolicyMiddleware",
    "cmdop_server.netinfo.ClientAddressMiddleware",
    "cmdop_server.errors.ApiErrorMiddleware",
]


class InlineSecurityMiddleware(SecurityMiddleware):
    """Django's SecurityMiddleware with its two hooks run in the event loop: they only read
    the request and set headers, so the thread hop that MiddlewareMixin makes for each under
    ASGI (two per API request) buys nothing."""

    async def __acall__(self, request):
        response = self.process_request(request) or await self.get_response(request)
        return self.process_response(request, response)


class AgentASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        # built once at start-up; the setting is only narrowed while the chain is assembled
        with override_settings(MIDDLEWARE=AGENT_MIDDLEWARE):
            super().load_middleware(is_async)


class PollASGIHandler(AgentASGIHandler):
    """The long-poll with no thread: the lean chain (all of it async) and the async view,
    without what Django's handler adds around every request. That is a thread of the
    request's own (``ThreadSensitiveContext``, for its sync code) and two hops into it, for
    the request_started and request_finished signals, whose receivers close the thread's
    database connections: about 3.7 ms of a worker's CPU per poll, most of it. The poll has
    no sync code, and its one database call (the credential lookup) runs on the worker's
    database threads, which close and recycle their connections themselves
    (``dbconn.in_pool``). As in Django's handler, a client that goes away ends its poll."""

    async def __call__(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = await self._unless_disconnected(request, receive)
            if response is not None:
                await self.send_response(response, send)
        finally:
            body_file.close()

    async def _unless_disconnected(self, request, receive):
        """The response, or None if the client disconnected first (the view cancelled)."""
        view = asyncio.ensure_future(self.run_get_response(request))
        disconnect = asyncio.ensure_future(self.listen_for_disconnect(receive))
        await asyncio.wait((view, disconnect), return_when=asyncio.FIRST_COMPLETED)
        for task in (disconnect, view):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not disconnect.cancelled():
            # the client went away (RequestAborted): taken as the answer, not left for
            # asyncio to log as an exception nobody retrieved
            with contextlib.suppress(RequestAborted):
                disconnect.result()
        if view.cancelled():
            return None
        return view.result()


def tune_collector() -> None:
    """Keep the cyclic garbage collector from stopping the event loop under a fleet.

    A worker holds every parked long-poll of its agents, about 200 objects each, and with
    Python's default thresholds (700, 10, 10) the collector walks them all again and again:
    at 2,000 parked polls in one worker, a full pass every ~15 s of up to 0.4 s of CPU
    (1.5 s on a loaded host) and a middle one every second of up to 0.17 s, while no wake-up
    is delivered, and ~0.9 ms of CPU per poll in all. Almost all of a poll's objects are
    freed by reference counting when it ends, so passes can be rare: what exists once the
    app is loaded is frozen (never walked again; it lives as long as the worker) and the
    young generation is 50,000 allocations, a pass of a few milliseconds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def route_agent_api(django_app):
    """Wrap the project's ASGI app: /api/agent/v1/ and /api/v1/ go to the lean handler, the
    long-poll to its own."""
    agent_app = AgentASGIHandler()
    poll_app = PollASGIHandler()

    async def application(scope, receive, send):
        if scope["type"] == "http":
            if scope["path"] == POLL_PATH and scope["method"] == "GET":
                return await poll_app(scope, receive, send)
            if scope["path"].startswith(LEAN_PREFIXES):
                return await agent_app(scope, receive, send)
        return await django_app(scope, receive, send)

    return application
