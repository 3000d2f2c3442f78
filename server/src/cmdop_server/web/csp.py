"""The Content-Security-Policy of every response (Django 5.2 has no CSP of its own).

The app is the one place that sends the browser-facing headers (CSP here; HSTS, nosniff,
X-Frame-Options and Referrer-Policy through Django's settings): nginx adds none of them,
so each reaches the browser exactly once.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """MiddlewareMixin is sync- and async-capable: the agent's async long-poll keeps its
    event loop (a sync-only middleware would pin a thread for its whole wait)."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response.headers.setdefault("Content-Security-Policy",
                                    settings.CMDOP_CONTENT_SECURITY_POLICY)
        return response
