"""One error shape for API clients: ``{"error": code, "detail": sentence}``, never HTML.

OAuth endpoints add RFC 6749's ``error_description`` (same text as ``detail``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger("cmdop.errors")

API_PREFIX = "/api/"
OAUTH_PREFIX = "/api/v1/oauth/"

_STATUS_CODES = {
    400: ("bad_request", "The request is malformed."),
    401: ("unauthorized", "Missing, invalid, expired or revoked credential."),
    403: ("forbidden", "Not allowed."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "Method not allowed."),
    413: ("payload_too_large", "Request body over the limit."),
    415: ("unsupported_media_type", "Unsupported Content-Type."),
    429: ("rate_limited", "Too many requests."),
    500: ("internal_error", "Internal error."),
    503: ("unavailable", "A backing service is unavailable."),
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.headers = headers or {}


def error_response(
    request: HttpRequest, status: int, code: str, detail: str, headers: dict | None = None
) -> JsonResponse:
    body = {"error": code, "detail": detail}
    if request.path.startswith(OAUTH_PREFIX):
        body["error_description"] = detail
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def default_error(request: HttpRequest, status: int) -> JsonResponse:
    code, detail = _STATUS_CODES.get(status, ("error", "Request failed."))
    return error_response(request, status, code, detail)


def _refuse_content_type(request: HttpRequest) -> JsonResponse | None:
    """OAuth endpoints take form bodies (RFC 6749), everything else JSON."""
    ctype = request.META.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if request.path.startswith(OAUTH_PREFIX):
        if ctype != "application/x-www-form-urlencoded":
            return error_response(request, 400, "invalid_request",
                                  "Send application/x-www-form-urlencoded.")
    elif ctype != "application/json":
        return error_response(request, 415, "unsupported_media_type", "Send application/json.")
    return None


class ApiErrorMiddleware:
    """Under /api/: oversized bodies get 413 before anything reads them; any non-JSON error
    (URL resolver 404, Django's 400 for a bad request, an unhandled exception) becomes the
    JSON shape."""

    # Both modes: under ASGI a sync-only middleware would make every async view (the
    # agent's long-poll) hold a thread for its whole wait.
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.async_mode:
            return self.__acall__(request)
        refused = self._refuse(request)
        if refused is not None:
            return refused
        return self._as_json(request, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        return self._as_json(request, await self.get_response(request))

    @staticmethod
    def _refuse(request: HttpRequest) -> HttpResponse | None:
        if not request.path.startswith(API_PREFIX):
            return None
        from django.conf import settings

        from cmdop_server import textinput

        # path parameters (slug, ids) reach queries without a schema of ours
        why = textinput.problem(request.path)
        if why:
            return error_response(request, 400, "bad_request", f"path {why}.")

        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return default_error(request, 400)
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return default_error(request, 413)
        if length and request.method in ("POST", "PUT", "PATCH"):
            return _refuse_content_type(request)
        return None

    @staticmethod
    def _as_json(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if (request.path.startswith(API_PREFIX) and response.status_code >= 400
                and "json" not in response.get("Content-Type", "")):
            return default_error(request, response.status_code)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception):
        if not request.path.startswith(API_PREFIX):
            return None
        from django.core.exceptions import (
            BadRequest,
            PermissionDenied,
            RequestDataTooBig,
            SuspiciousOperation,
        )
        from django.http import Http404

        for kind, status in ((Http404, 404), (PermissionDenied, 403),
                             (RequestDataTooBig, 413), (SuspiciousOperation, 400),
                             (BadRequest, 400)):
            if isinstance(exception, kind):
                return default_error(request, status)
        logger.error("unhandled %s on %s %s", type(exception).__name__, request.method,
                     request.path)
        return default_error(request, 500)
