"""The Content-Security-Policy of every response (Django 5.2 has no CSP of its own).

The app is the one place that sends the browser-facing headers (CSP here; HSTS, nosniff,
X-Frame-Options and Referrer-Policy through Django's settings): nginx adds none of them,
so each reaches the browser exactly once.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse


class ContentSecurityPolicyMiddleware:
    """Sync and async natively, not through MiddlewareMixin: under ASGI each sync hook would
    cost a thread hop per request (the APIs' lean stack, agent_api/asgi.py, has it too)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.policy = settings.CMDOP_CONTENT_SECURITY_POLICY
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return self._add(self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        return self._add(await self.get_response(request))

    def _add(self, response: HttpResponse) -> HttpResponse:
        response.headers.setdefault("Content-Security-Policy", self.policy)
        return response
