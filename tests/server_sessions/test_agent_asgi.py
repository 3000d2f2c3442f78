"""The agent protocol's lean ASGI handler (cmdop_server.asgi routes /api/agent/v1/ to it):
same views and JSON error rules, none of the browser middleware."""

from __future__ import annotations

import asyncio
import json

import pytest
from cmdop_server.agent_api.asgi import AGENT_MIDDLEWARE, route_agent_api

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


def _call(app, method: str, path: str, headers: dict, body: bytes = b""):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
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
    assert AGENT_MIDDLEWARE == ["django.middleware.security.SecurityMiddleware",
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
