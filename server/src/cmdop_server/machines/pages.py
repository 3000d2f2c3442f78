"""The dashboard's machines page: the workspace's machines and, for those who may manage
them, its join tokens."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_http_methods

from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.machines import actions as machine_actions
from cmdop_server.machines.models import JoinToken, Machine
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action, can
from cmdop_server.web import dashboard


@login_required
@require_http_methods(["GET", "POST"])
@dashboard.page_errors
def machines(request: SignedInRequest, slug: str) -> HttpResponse:
    membership = dashboard.membership(request, slug, Action.MACHINE_VIEW)
    manage = can(membership.role, Action.MACHINE_MANAGE)
    new_token = None
    if request.method == "POST":
        membership = dashboard.membership(request, slug, Action.MACHINE_MANAGE)
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
        "can_open": can(membership.role, Action.SESSION_ACCESS),
        "machines": Machine.objects.in_workspace(ws).order_by("hostname"),
        "tokens": JoinToken.objects.in_workspace(ws).order_by("-created_at")[:50]
        if manage else [],
    })


urlpatterns = [
    path("machines/", machines, name="dash-machines"),
]
