"""The agent protocol's lean ASGI handler (cmdop_server.asgi routes /api/agent/v1/ to it):
same views and JSON error rules, none of the browser middleware."""

from __future__ import annotations

import asyncio
import gc
import json

import pytest
from cmdop_server import metrics
from cmdop_server.agent_api.asgi import AGENT_MIDDLEWARE, route_agent_api

from tests.server_sessions.helpers import keyed_workspace

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


def _scope(method: str, path: str, headers: dict, query: str = "") -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query.encode(), "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}


def _call(app, method: str, path: str, headers: dict, body: bytes = b"", query: str = ""):
    scope = _scope(method, path, headers, query)
    sent, out = [], []

    async def receive():
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        out.append(message)

    asyncio.run(app(scope, receive, send))
    status = out[0]["status"]
    payload = b"".join(m.get("body", b"") for m in out[1:])
    return status, json.loads(payload), {k.lower(): v for k, v in out[0]["headers"]}


def _browser_app(scope, receive, send):
    raise AssertionError("API paths must not reach the browser stack")


def test_agent_paths_use_the_lean_stack_with_the_same_error_shape():
    app = route_agent_api(_browser_app)
    status, body, _ = _call(app, "POST", "/api/agent/v1/heartbeat",
                            {"host": "x", "content-type": "application/json",
                             "authorization": "Bearer mc_nope"}, b'{"version": "0.1.0"}')
    assert status == 401 and body["error"] == "unauthorized"
    status, body, _ = _call(app, "POST", "/api/agent/v1/events",
                            {"host": "x", "content-type": "application/json",
                             "content-length": str(2 * 1024 * 1024)})
    assert status == 413 and body["error"] == "payload_too_large"
    status, body, _ = _call(app, "POST", "/api/agent/v1/heartbeat",
                            {"host": "x", "content-type": "text/plain",
                             "content-length": "2"}, b"{}")
    assert status == 415


def test_the_lean_stack_keeps_security_headers_and_drops_the_browser_middleware():
    assert AGENT_MIDDLEWARE == ["cmdop_server.agent_api.asgi.InlineSecurityMiddleware",
                                "cmdop_server.web.csp.ContentSecurityPolicyMiddleware",
                                "cmdop_server.netinfo.ClientAddressMiddleware",
                                "cmdop_server.errors.ApiErrorMiddleware"]
    app = route_agent_api(_browser_app)
    _, _, headers = _call(app, "GET", "/api/agent/v1/work",
                          {"host": "x", "authorization": "Bearer mc_nope"})
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert b"frame-ancestors 'none'" in headers[b"content-security-policy"]
    assert b"set-cookie" not in headers and b"vary" not in headers


def test_the_user_api_is_bearer_only_and_takes_the_lean_stack_too():
    """/api/v1/ reads no session, cookie user or CSRF token, so it skips that middleware
    (each one is a thread hop per request under ASGI); browser pages keep the full stack."""
    app = route_agent_api(_browser_app)
    status, body, headers = _call(app, "GET", "/api/v1/me",
                                  {"host": "x", "authorization": "Bearer cmd_nope"})
    assert status == 401 and body["error"] == "unauthorized"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert b"default-src 'none'" in headers[b"content-security-policy"]
    assert b"set-cookie" not in headers
    with pytest.raises(AssertionError, match="API paths must not reach the browser stack"):
        _call(app, "GET", "/login/", {"host": "x"})  # a page: the full (browser) app


def test_the_long_poll_answers_as_the_lean_stack_does():
    """GET /work has a handler of its own (no thread of Django's): the same auth, query
    checks, errors and headers as every agent call."""
    machine = keyed_workspace("leanpoll", "Lean poll")["machine"]
    app = route_agent_api(_browser_app)
    status, body, headers = _call(app, "GET", "/api/agent/v1/work",
                                  {"host": "x", "authorization": "Bearer mc_nope"})
    assert (status, body["error"]) == (401, "unauthorized")
    assert headers[b"www-authenticate"] == b'Bearer realm="cmdop-agent"'
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert b"frame-ancestors 'none'" in headers[b"content-security-policy"]
    bearer = {"host": "x", "authorization": f"Bearer {machine['credential']}"}
    status, body, _ = _call(app, "GET", "/api/agent/v1/work", bearer, query="wait=soon")
    assert (status, body["error"]) == (400, "bad_request") and body["detail"].startswith("wait")
    status, body, _ = _call(app, "GET", "/api/agent/v1/work", bearer, query="cursor=c_bogus")
    assert (status, body["error"]) == (400, "bad_request")
    status, body, headers = _call(app, "GET", "/api/agent/v1/work", bearer, query="wait=0")
    assert (status, body) == (200, {"items": [], "cursor": "c_0-0"})
    assert headers[b"content-type"] == b"application/json; charset=utf-8"
    assert headers[b"x-content-type-options"] == b"nosniff"


def _parked() -> float:
    return metrics.merged()[1].get(("cmdop_agent_polls_parked", ()), 0.0)


def test_a_parked_poll_ends_when_its_agent_goes_away(caplog):
    """As under Django's handler: the view is cancelled, not left waiting out its 25 s, and
    the disconnect is taken as the answer (not left for asyncio to log as an error)."""
    machine = keyed_workspace("gonepoll", "Gone poll")["machine"]
    app = route_agent_api(_browser_app)
    scope = _scope("GET", "/api/agent/v1/work",
                   {"host": "x", "authorization": f"Bearer {machine['credential']}"},
                   "wait=25")
    out: list = []

    async def scenario() -> float:
        before = _parked()
        messages = 0

        async def receive():
            nonlocal messages
            messages += 1
            if messages == 1:
                return {"type": "http.request", "body": b"", "more_body": False}
            while _parked() <= before:  # the poll is parked: now the agent goes away
                await asyncio.sleep(0.02)
            return {"type": "http.disconnect"}

        async def send(message):
            out.append(message)

        # far below the poll's 25 s: only a cancelled poll ends within it
        await asyncio.wait_for(app(scope, receive, send), timeout=15)
        return before

    before = asyncio.run(scenario())
    assert out == []  # nothing is sent to an agent that has gone
    assert _parked() == before
    gc.collect()  # a task whose exception nobody retrieved logs it when it is collected
    assert "never retrieved" not in caplog.text
