"""The APIs' own ASGI handler: the same Django, URLs and views, without the browser
middleware (sessions, CSRF, auth, messages, clickjacking).

Django runs each sync hook of a ``MiddlewareMixin`` middleware through ``sync_to_async``:
with the browser stack that is ~16 thread hops per request, most of a poll's cost on two
cores. The agent protocol and the user API (``/api/v1/``) are bearer-only JSON — no view
under them reads a session, a cookie user or a CSRF token — so they need none of it; what
they do need — the 413/Content-Type/JSON-error rules of ``ApiErrorMiddleware``, the
security headers and the client's address for audit rows — stays. Browser pages (login,
device approval, dashboard) keep the full stack.
"""

from __future__ import annotations

from django.core.handlers.asgi import ASGIHandler
from django.test.utils import override_settings

AGENT_PREFIX = "/api/agent/v1/"
USER_API_PREFIX = "/api/v1/"
LEAN_PREFIXES = (AGENT_PREFIX, USER_API_PREFIX)
AGENT_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "cmdop_server.web.csp.ContentSecurityPolicyMiddleware",
    "cmdop_server.netinfo.ClientAddressMiddleware",
    "cmdop_server.errors.ApiErrorMiddleware",
]


class AgentASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        # built once at start-up; the setting is only narrowed while the chain is assembled
        with override_settings(MIDDLEWARE=AGENT_MIDDLEWARE):
            super().load_middleware(is_async)


def route_agent_api(django_app):
    """Wrap the project's ASGI app: /api/agent/v1/ and /api/v1/ go to the lean handler."""
    agent_app = AgentASGIHandler()

    async def application(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(LEAN_PREFIXES):
            return await agent_app(scope, receive, send)
        return await django_app(scope, receive, send)

    return application
