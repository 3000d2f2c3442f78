"""The agent protocol v1 under /api/agent/v1/ (docs/agent-protocol.md is the contract);
OpenAPI at /api/agent/v1/openapi.json. Views are thin: ``do_*`` actions do the work.

``GET work`` is an async view: a waiting poll costs a coroutine and an asyncio.Event, not a
thread or a Redis connection (see workqueue.py), so one gunicorn ``asgi`` worker holds
thousands of idle agents.
"""

from __future__ import annotations

import logging

import redis
from django.core.exceptions import ObjectDoesNotExist
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from ninja import NinjaAPI, Query
from ninja.errors import AuthenticationError, HttpError, ValidationError

from cmdop_server import audit, metrics, ratelimit, workqueue
from cmdop_server.agent_api import auth
from cmdop_server.agent_api.schemas import (
    AckIn,
    AckOut,
    EnrollIn,
    EnrollOut,
    EventsIn,
    EventsOut,
    HeartbeatIn,
    HeartbeatOut,
    WorkOut,
)
from cmdop_server.errors import ApiError, default_error, error_response
from cmdop_server.identity.authn import authenticate_bearer
from cmdop_server.machines import actions
from cmdop_server.netinfo import client_ip
from cmdop_server.ratelimit import RateLimitedError
from cmdop_server.sessions.actions import do_apply_agent_events, do_heartbeat
from cmdop_server.textinput import Input

logger = logging.getLogger("cmdop.agent_api")

MAX_WAIT = 25
MAX_EVENT_BATCH = 256 * 1024

api = NinjaAPI(title="CMDOP agent protocol", version="1", urls_namespace="agent-v1",
               openapi_url="/openapi.json", docs_url=None)


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    return error_response(request, exc.status, exc.code, exc.detail, exc.headers)


@api.exception_handler(ValidationError)
def _invalid(request, exc: ValidationError):
    first = exc.errors[0] if exc.errors else {}
    loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
    return error_response(request, 400, "bad_request", f"{loc or 'body'}: "
                          f"{first.get('msg', 'invalid')}")


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc):
    response = default_error(request, 401)
    response["WWW-Authenticate"] = 'Bearer realm="cmdop-agent"'
    return response


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    return default_error(request, exc.status_code)


@api.exception_handler(RateLimitedError)
def _rate_limited(request, exc: RateLimitedError):
    return error_response(request, 429, "rate_limited", "Too many requests.",
                          {"Retry-After": str(exc.retry_after)})


@api.exception_handler(ObjectDoesNotExist)
def _missing(request, exc):
    return default_error(request, 404)


@api.exception_handler(redis.RedisError)
def _redis_down(request, exc):
    # the message says which failure (refused, timed out, the client's pool exhausted);
    # redis-py's messages carry no credentials
    logger.error("redis unavailable: %s: %s", type(exc).__name__, exc)
    metrics.inc("cmdop_redis_errors_total")
    return error_response(request, 503, "unavailable", "A backing service is unavailable.")


@api.exception_handler(InterfaceError)  # a connection the database closed under us
@api.exception_handler(OperationalError)
def _database_down(request, exc):
    # a backing service is down, not a bug: 503 like Redis down, and no traceback logged
    logger.error("database unavailable: %s", type(exc).__name__)
    metrics.inc("cmdop_database_errors_total")
    return error_response(request, 503, "unavailable", "A backing service is unavailable.")


@api.exception_handler(Exception)
def _internal(request, exc):
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
    return error_response(request, 500, "unavailable", "Internal error; retry later.")


def _enroll_out(machine, credential: str | None = None) -> dict:
    return {"machine_id": machine.public_id, "credential": credential,
            "workspace": machine.workspace.slug, "heartbeat_interval": machine.heartbeat_interval,
            "poll_timeout": actions.POLL_TIMEOUT}


@api.post("/enroll", auth=auth.enroll, response={201: EnrollOut}, exclude_none=True)
def enroll(request: auth.EnrollRequest, body: EnrollIn):
    """Join token in the body (no Authorization), or the device flow's access token."""
    ip = client_ip(request)
    if body.join_token:
        machine, credential = actions.do_enroll_with_join_token(
            body.join_token, body.hostname, body.os, body.version, ip)
        return 201, _enroll_out(machine, credential)
    raw = request.auth.bearer
    principal, reason = (authenticate_bearer(raw, "agent") if raw else
                         (None, "missing_credential"))
    if reason == "insufficient_scope":
        raise ApiError(403, "forbidden", "This token was not granted the agent scope.")
    if principal is None or principal.family_id is None:
        ratelimit.enforce("auth", f"ip:{ip}")
        audit.record("machine.enroll", success=False, method="device_flow", ip=ip,
                     reason=reason or "not_an_access_token")
        raise ApiError(401, "unauthorized", "Send a join token or an agent access token.")
    machine = actions.do_enroll_with_device_flow(principal.user, principal.family_id,
                                                 body.workspace, body.hostname, body.os,
                                                 body.version, ip)
    return 201, _enroll_out(machine)


@api.post("/heartbeat", auth=auth.machine, response=HeartbeatOut, exclude_none=True)
def heartbeat(request: auth.AgentRequest, body: HeartbeatIn):
    ip = client_ip(request)
    machine = do_heartbeat(request.auth.machine, body.hostname, body.os, body.version,
                           body.boot_id, ip)
    return {"server_time": timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "heartbeat_interval": machine.heartbeat_interval,
            "credential": actions.do_issue_handover_credential(request.auth.machine, ip)}


class WorkQuery(Input):
    cursor: str | None = None
    wait: float = MAX_WAIT


@api.get("/work", auth=auth.machine_pooled, response=WorkOut)
async def work(request: auth.AgentRequest, query: Query[WorkQuery]):
    """Long-poll: returns at once when there is work after ``cursor``, else after ``wait``
    seconds (at most 25) with no items."""
    wait = max(0.0, min(float(query.wait), MAX_WAIT))
    try:
        with metrics.parked():
            batch = await workqueue.wait_for_work(request.auth.machine.pk, query.cursor, wait)
    except workqueue.BadCursor as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    return {"items": batch.items, "cursor": batch.cursor}


@api.post("/work/ack", auth=auth.machine, response=AckOut)
def ack(request: auth.AgentRequest, body: AckIn):
    return {"acked": workqueue.ack(request.auth.machine.pk, body.ids)}


@api.post("/events", auth=auth.machine, response=EventsOut)
def events(request: auth.AgentRequest, body: EventsIn):
    if len(request.body) > MAX_EVENT_BATCH + 4096:
        raise ApiError(413, "payload_too_large", "An event batch is at most 256 KiB.")
    batch = [e.model_dump(exclude_none=True) for e in body.events]
    accepted = do_apply_agent_events(request.auth.machine, body.boot_id, batch,
                                     client_ip(request))
    return {"accepted_through": accepted}


