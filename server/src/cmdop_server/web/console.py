"""The console's pages outside a workspace: ``/`` (the signed-in person's workspaces) and
creating an API key (shown once; the tokens page lists and revokes them)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from cmdop_server.errors import ApiError
from cmdop_server.identity import actions
from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action
from cmdop_server.web import dashboard


@login_required
@require_GET
def home(request: SignedInRequest) -> HttpResponse:
    memberships = request.user.memberships.select_related("workspace").order_by(
        "workspace__slug")
    return render(request, "cmdop/home.html", {"memberships": memberships})


@login_required
@require_POST
@dashboard.page_errors
def create_api_key(request: SignedInRequest) -> HttpResponse:
    membership = dashboard.membership(request, request.POST.get("workspace", ""),
                                      Action.API_KEY_USE)
    name = request.POST.get("name", "").strip()[:100]
    if not name:
        raise ApiError(400, "bad_request", "Give the key a name.")
    key, clear = actions.do_create_api_key(membership, name, client_ip(request))
    response = render(request, "cmdop/api_key_created.html", {"key": key, "clear": clear})
    response["Cache-Control"] = "no-store"  # the key is on this page only
    return response
