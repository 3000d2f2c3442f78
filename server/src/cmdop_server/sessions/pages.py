"""Dashboard pages for machines, sessions (with live output) and the audit log.

Server-rendered; the one script is the live output view's long-poll of ``output.json``.
Every page applies the same checks as the API: the workspace role table for the page, and
``authz.authorize`` for anything about one session.
"""

from __future__ import annotations

import base64

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import (
    Http404,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.urls import path
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_http_methods

from cmdop_server import output
from cmdop_server.audit import AUDIT_DB, export
from cmdop_server.audit.models import AuditEvent
from cmdop_server.errors import ApiError
from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.identity.models import Membership
from cmdop_server.machines import actions as machine_actions
from cmdop_server.machines.models import JoinToken, Machine
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action, can
from cmdop_server.sessions import actions
from cmdop_server.sessions.api import _release_db_connections
from cmdop_server.sessions.authz import SessionPermission, authorize
from cmdop_server.sessions.models import Participant
from cmdop_server.workqueue import BadCursor


def _membership(request: SignedInRequest, slug: str, action: Action) -> Membership:
    membership = (Membership.unscoped.select_related("workspace", "user")
                  .filter(workspace__slug=slug, user=request.user).first())
    if membership is None:
        raise Http404("No such workspace.")
    if not can(membership.role, action):
        raise ApiError(403, "forbidden", f"Your role may not {action}.")
    return membership


def _page_errors(view):
    """ApiError (refused, invalid) becomes a plain page with its sentence, never a trace."""
    def wrapped(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ApiError as exc:
            if exc.status == 404:
                raise Http404(exc.detail) from None
            return render(request, "cmdop/refused.html", {"detail": exc.detail},
                          status=exc.status)
    return wrapped


@login_required
@require_http_methods(["GET", "POST"])
@_page_errors
def machines(request: SignedInRequest, slug: str) -> HttpResponse:
    membership = _membership(request, slug, Action.MACHINE_VIEW)
    manage = can(membership.role, Action.MACHINE_MANAGE)
    new_token = None
    if request.method == "POST":
        membership = _membership(request, slug, Action.MACHINE_MANAGE)
        if request.POST.get("revoke"):
            machine_actions.do_revoke_join_token(membership, int(request.POST["revoke"]),
                                                 client_ip(request))
            return redirect("dash-machines", slug=slug)
        _, new_token = machine_actions.do_create_join_token(
            membership, request.POST.get("name", "")[:100],
            int(request.POST.get("ttl", 3600)), int(request.POST.get("usage_limit", 1)),
            client_ip(request))
    ws = membership.workspace
    return render(request, "cmdop/machines.html", {
        "workspace": ws, "manage": manage, "new_token": new_token,
        "machines": Machine.objects.in_workspace(ws).order_by("hostname"),
        "tokens": JoinToken.objects.in_workspace(ws).order_by("-created_at")[:50]
        if manage else [],
    })


@login_required
@require_http_methods(["GET", "POST"])
@_page_errors
def sessions(request: SignedInRequest, slug: str) -> HttpResponse:
    membership = _membership(request, slug, Action.SESSION_VIEW)
    if request.method == "POST":
        membership = _membership(request, slug, Action.SESSION_ACCESS)
        session = actions.do_create_session(membership, request.POST.get("machine_id", ""),
                                            80, 24, client_ip(request))
        return redirect("dash-session", slug=slug, session_id=session.public_id)
    ws = membership.workspace
    mine = (Participant.objects.filter(user=request.user, session__workspace=ws)
            .select_related("session", "session__machine").order_by("-session__created_at"))
    return render(request, "cmdop/sessions.html", {
        "workspace": ws, "participations": mine[:200],
        "can_open": can(membership.role, Action.SESSION_ACCESS),
        "machines": Machine.objects.in_workspace(ws).filter(disabled_at=None)
        .order_by("hostname"),
    })


@login_required
@require_http_methods(["GET", "POST"])
@_page_errors
def session(request: SignedInRequest, slug: str, session_id: str) -> HttpResponse:
    membership = _membership(request, slug, Action.SESSION_VIEW)
    ip = client_ip(request)
    if request.method == "POST":
        access = authorize(request.user, session_id, SessionPermission.SEND_INPUT,
                           workspace=membership.workspace, ip=ip)
        text = request.POST.get("input", "")[:4000] + "\n"
        actions.send_input(access, base64.b64encode(text.encode()).decode())
        return redirect("dash-session", slug=slug, session_id=session_id)
    access = authorize(request.user, session_id, SessionPermission.VIEW_OUTPUT,
                       workspace=membership.workspace, ip=ip)
    return render(request, "cmdop/session.html", {
        "workspace": membership.workspace, "session": access.session,
        "role": access.role, "operator": access.role == "operator"})


@require_GET
async def session_output(request: SignedInRequest, slug: str, session_id: str) -> HttpResponse:
    """The live view's long-poll (cookie session): the same checks as the API's output."""
    user = await request.auser()
    if not user.is_authenticated:
        return JsonResponse({"error": "unauthorized"}, status=401)

    def check():
        membership = _membership(request, slug, Action.SESSION_VIEW)
        access = authorize(user, session_id, SessionPermission.VIEW_OUTPUT,
                           workspace=membership.workspace, ip=client_ip(request))
        _release_db_connections()
        return access

    try:
        access = await sync_to_async(check)()
        page = await output.read(access.session.pk, request.GET.get("cursor") or None,
                                 min(float(request.GET.get("wait", 20)), 25.0))
    except ApiError as exc:
        return JsonResponse({"error": exc.code, "detail": exc.detail}, status=exc.status)
    except (BadCursor, ValueError):
        return JsonResponse({"error": "bad_request"}, status=400)
    except Http404:
        return JsonResponse({"error": "not_found"}, status=404)
    return JsonResponse({"items": page.items, "cursor": page.cursor})


@login_required
@require_GET
@_page_errors
def audit_log(request: SignedInRequest, slug: str) -> HttpResponse | StreamingHttpResponse:
    membership = _membership(request, slug, Action.AUDIT_VIEW)
    ws = membership.workspace
    since = parse_datetime(request.GET.get("since", "") or "") or None
    until = parse_datetime(request.GET.get("until", "") or "") or None
    rows = AuditEvent.objects.using(AUDIT_DB).filter(workspace_id=ws.pk)
    if request.GET.get("event"):
        rows = rows.filter(event__startswith=request.GET["event"][:64])
    if request.GET.get("success") in ("true", "false"):
        rows = rows.filter(success=request.GET["success"] == "true")
    if since:
        rows = rows.filter(occurred_at__gte=since)
    if until:
        rows = rows.filter(occurred_at__lt=until)
    if request.GET.get("export") in ("jsonl", "csv"):
        fmt = request.GET["export"]
        body = (export.jsonl if fmt == "jsonl" else export.csv_lines)(ws.pk, since, until)
        response = StreamingHttpResponse(
            body, content_type="application/x-ndjson" if fmt == "jsonl" else "text/csv")
        response["Content-Disposition"] = f'attachment; filename="audit-{ws.slug}.{fmt}"'
        return response
    return render(request, "cmdop/audit.html", {
        "workspace": ws, "rows": rows.order_by("-id")[:200], "filters": request.GET})


urlpatterns = [
    path("machines/", machines, name="dash-machines"),
    path("sessions/", sessions, name="dash-sessions"),
    path("sessions/<str:session_id>/", session, name="dash-session"),
    path("sessions/<str:session_id>/output.json", session_output, name="dash-session-output"),
    path("audit/", audit_log, name="dash-audit"),
]
