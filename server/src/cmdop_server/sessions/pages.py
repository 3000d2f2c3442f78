"""Dashboard pages for sessions (the machines and audit pages live with their apps).

Server-rendered; a session's page is a terminal (web/assets/session.js) over the WebSocket
of sessions/terminal.py. Every page applies the same checks as the API: the workspace role
table for the page, and ``authz.authorize`` for anything about one session.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods

from cmdop_server import ratelimit
from cmdop_server.errors import ApiError
from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.identity.models import Membership
from cmdop_server.machines.models import Machine
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action, can
from cmdop_server.sessions import actions
from cmdop_server.sessions.authz import SessionPermission, authorize
from cmdop_server.sessions.models import OPEN_STATUSES, Participant, SessionRole
from cmdop_server.web import dashboard


@login_required
@require_http_methods(["GET", "POST"])
@dashboard.page_errors
def sessions(request: SignedInRequest, slug: str) -> HttpResponse:
    membership = dashboard.membership(request, slug, Action.SESSION_VIEW)
    if request.method == "POST":
        membership = dashboard.membership(request, slug, Action.SESSION_ACCESS)
        ratelimit.enforce("session", f"user:{request.user.pk}")
        session = actions.do_create_session(membership, request.POST.get("machine_id", ""),
                                            80, 24, client_ip(request))
        return redirect("dash-session", slug=slug, session_id=session.public_id)
    ws = membership.workspace
    mine = (Participant.objects.filter(user=request.user, session__workspace=ws)
            .select_related("session", "session__machine").order_by("-session__created_at"))
    return render(request, "cmdop/sessions.html", {
        "workspace": ws, "participations": mine[:200], "live": OPEN_STATUSES,
        "can_open": can(membership.role, Action.SESSION_ACCESS),
        "machines": Machine.objects.in_workspace(ws).filter(disabled_at=None)
        .order_by("hostname"),
    })


@login_required
@require_http_methods(["GET", "POST"])
@dashboard.page_errors
def session(request: SignedInRequest, slug: str, session_id: str) -> HttpResponse:
    """The terminal. A pending session is shown too: the terminal opens when the agent
    accepts (the WebSocket waits for it), without a reload. POST: an operator invites a
    workspace member as observer or operator (a session operation)."""
    membership = dashboard.membership(request, slug, Action.SESSION_VIEW)
    ip = client_ip(request)
    if request.method == "POST":
        access = authorize(request.user, session_id, SessionPermission.MANAGE,
                           workspace=membership.workspace, ip=ip, membership=membership)
        role = request.POST.get("role", "")
        if role not in SessionRole.values or not request.POST.get("user_id", "").isdigit():
            raise ApiError(400, "bad_request", "Choose a member and a role.")
        ratelimit.enforce("session", f"user:{request.user.pk}")
        actions.do_add_participant(access, int(request.POST["user_id"]), SessionRole(role), ip)
        return redirect("dash-session", slug=slug, session_id=session_id)
    access = authorize(request.user, session_id, SessionPermission.VIEW_OUTPUT,
                       workspace=membership.workspace, ip=ip, pending_ok=True)
    operator = access.role == SessionRole.OPERATOR
    return render(request, "cmdop/session.html", {
        "workspace": membership.workspace, "session": access.session,
        "role": access.role, "operator": operator,
        "members": Membership.objects.in_workspace(membership.workspace)
        .exclude(user=request.user).select_related("user").order_by("user__username")
        if operator else []})


urlpatterns = [
    path("sessions/", sessions, name="dash-sessions"),
    path("sessions/<str:session_id>/", session, name="dash-session"),
]
