"""Dashboard pages for sessions, with live output (the machines and audit pages live with
their apps).

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
)
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_http_methods

from cmdop_server import dbconn, output
from cmdop_server.errors import ApiError
from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.machines.models import Machine
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action, can
from cmdop_server.sessions import actions
from cmdop_server.sessions.authz import SessionPermission, authorize
from cmdop_server.sessions.models import Participant
from cmdop_server.web import dashboard
from cmdop_server.workqueue import BadCursor


@login_required
@require_http_methods(["GET", "POST"])
@dashboard.page_errors
def sessions(request: SignedInRequest, slug: str) -> HttpResponse:
    membership = dashboard.membership(request, slug, Action.SESSION_VIEW)
    if request.method == "POST":
        membership = dashboard.membership(request, slug, Action.SESSION_ACCESS)
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
@dashboard.page_errors
def session(request: SignedInRequest, slug: str, session_id: str) -> HttpResponse:
    membership = dashboard.membership(request, slug, Action.SESSION_VIEW)
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
        membership = dashboard.membership(request, slug, Action.SESSION_VIEW)
        access = authorize(user, session_id, SessionPermission.VIEW_OUTPUT,
                           workspace=membership.workspace, ip=client_ip(request))
        dbconn.release_thread_connections()
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


urlpatterns = [
    path("sessions/", sessions, name="dash-sessions"),
    path("sessions/<str:session_id>/", session, name="dash-session"),
    path("sessions/<str:session_id>/output.json", session_output, name="dash-session-output"),
]
