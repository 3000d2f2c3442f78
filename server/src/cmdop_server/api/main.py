"""The JSON API under /api/v1/ (django-ninja); OpenAPI 3 at /api/v1/openapi.json."""

from __future__ import annotations

import logging

import redis
from django.core.exceptions import ObjectDoesNotExist
from django.db import InterfaceError, OperationalError
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from cmdop_server import metrics
from cmdop_server.errors import ApiError, default_error, error_response
from cmdop_server.ratelimit import RateLimitedError

logger = logging.getLogger("cmdop.api")

api = NinjaAPI(
    title="CMDOP control plane",
    version="1",
    urls_namespace="api-v1",
    openapi_url="/openapi.json",
    docs_url=None,
)


def _validation_detail(errors: list) -> str:
    # loc and message only: pydantic's "input" would echo request values (maybe secrets)
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "form", "payload"))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "Invalid request."


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    return error_response(request, exc.status, exc.code, exc.detail, exc.headers)


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    code = "invalid_request" if request.path.startswith("/api/v1/oauth/") else "bad_request"
    return error_response(request, 400, code, _validation_detail(exc.errors))


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc):
    response = default_error(request, 401)
    response["WWW-Authenticate"] = 'Bearer realm="cmdop"'
    return response


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    response = default_error(request, exc.status_code)
    if exc.status_code == 400:
        response = error_response(request, 400, "bad_request", str(exc))
    return response


@api.exception_handler(RateLimitedError)
def _rate_limited(request, exc: RateLimitedError):
    return error_response(request, 429, "rate_limited", "Too many requests.",
                          {"Retry-After": str(exc.retry_after)})


@api.exception_handler(redis.RedisError)
def _redis_down(request, exc):
    # the message says which failure (refused, timed out, the client's pool exhausted);
    # redis-py's messages carry no credentials
    logger.error("redis unavailable: %s: %s", type(exc).__name__, exc)
    metrics.inc("cmdop_redis_errors_total")
    return default_error(request, 503)


@api.exception_handler(InterfaceError)  # a connection the database closed under us
@api.exception_handler(OperationalError)
def _database_down(request, exc):
    logger.error("database unavailable: %s", type(exc).__name__)
    metrics.inc("cmdop_database_errors_total")
    return default_error(request, 503)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return default_error(request, 404)


@api.exception_handler(ObjectDoesNotExist)
def _does_not_exist(request, exc):
    return default_error(request, 404)


@api.exception_handler(Exception)
def _internal(request, exc):
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
    return default_error(request, 500)


def _mount() -> None:
    from cmdop_server.api import me, oauth, workspaces
    from cmdop_server.audit.api import router as audit_router
    from cmdop_server.audit.api import site_router as audit_site_router
    from cmdop_server.sessions.api import router as sessions_router

    api.add_router("/oauth", oauth.router)
    api.add_router("", me.router)
    api.add_router("/workspaces", workspaces.router)
    api.add_router("/workspaces", sessions_router)
    api.add_router("/workspaces", audit_router)
    api.add_router("/audit", audit_site_router)
    _document_permissions()  # last: it documents the operations of every router above


def _document_permissions() -> None:
    """Each workspace operation states its Action and the roles allowed, in the schema."""
    from cmdop_server.api.auth import ResourceAuth, WorkspaceAuth
    from cmdop_server.permissions import PERMISSIONS

    for _, router in api._routers:
        for path_view in router.path_operations.values():
            for op in path_view.operations:
                rule = next((a for a in op.auth_callbacks
                             if isinstance(a, WorkspaceAuth | ResourceAuth)), None)
                if rule is not None:
                    roles = sorted(str(r) for r in PERMISSIONS[rule.action])
                    op.openapi_extra = {**(op.openapi_extra or {}),
                                        "x-cmdop-action": str(rule.action),
                                        "x-cmdop-roles": roles}


_mount()
