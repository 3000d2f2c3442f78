"""Server-rendered pages: sign-in, the device verification page, tokens. No JavaScript
here; the pages' one script and stylesheet are files served by ``asset``."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from cmdop_server import audit, ratelimit
from cmdop_server.errors import ApiError
from cmdop_server.identity import actions, totp
from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.identity.models import ApiKey, TokenFamily, User
from cmdop_server.identity.oauth_clients import CLIENTS
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action, can
from cmdop_server.web import second_factor


def _too_many(request: HttpRequest, exc: ratelimit.RateLimitedError) -> HttpResponse:
    response = render(request, "cmdop/429.html", {"retry_after": exc.retry_after}, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


class LoginView(auth_views.LoginView):
    template_name = "cmdop/login.html"
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        username = request.POST.get("username", "")[:150]
        try:
            ratelimit.enforce("auth", f"ip:{client_ip(request)}", f"login:{username.lower()}")
        except ratelimit.RateLimitedError as exc:
            return _too_many(request, exc)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        second_step = second_factor.defer_sign_in(self.request, form.get_user(),
                                                  self.get_success_url())
        if second_step is not None:
            return second_step
        audit.record("auth.login", user=form.get_user(), method="password",
                     ip=client_ip(self.request))
        return super().form_valid(form)

    def form_invalid(self, form):
        username = self.request.POST.get("username", "")[:150]
        # a failure against a real account is that user's: their workspaces' Owners and
        # Admins see it in the members' authentication export (audit/api.py)
        target = User.objects.filter(username=username).first() if username else None
        audit.record("auth.login", success=False, user=target, method="password",
                     ip=client_ip(self.request), reason="bad_credentials", username=username)
        return super().form_invalid(form)


login = LoginView.as_view()


@require_POST
def logout(request: HttpRequest) -> HttpResponseBase:
    return auth_views.LogoutView.as_view(next_page="login")(request)


@login_required
@require_http_methods(["GET", "POST"])
def device(request: SignedInRequest) -> HttpResponse:
    """Step 1: enter the code. Step 2 (POST): see who is asking, then approve or deny."""
    if request.method == "GET":
        return render(request, "cmdop/device.html",
                      {"user_code": request.GET.get("user_code", "")[:20]})
    typed = request.POST.get("user_code", "")[:20]
    ip = client_ip(request)
    try:
        ratelimit.enforce("auth", f"ip:{ip}", f"user:{request.user.pk}")
    except ratelimit.RateLimitedError as exc:
        return _too_many(request, exc)
    da = actions.do_find_user_code(request.user, typed, ip)
    if da is None:
        return render(request, "cmdop/device.html",
                      {"user_code": typed, "error": "That code is not valid. Check it and "
                       "try again; codes expire after 15 minutes."}, status=400)
    return render(request, "cmdop/device_confirm.html", {
        "user_code": typed, "client": CLIENTS.get(da.client_id, da.client_id),
        "client_id": da.client_id, "device_name": da.device_name, "scope": da.scope,
        "requester_ip": da.requester_ip, "requester_agent": da.requester_agent,
        "created_at": da.created_at, "needs_code": totp.has_second_factor(request.user),
    })


@login_required
@require_POST
def device_decide(request: SignedInRequest) -> HttpResponse:
    approve = request.POST.get("decision") == "approve"
    ip = client_ip(request)
    try:
        ratelimit.enforce("auth", f"ip:{ip}", f"user:{request.user.pk}")
    except ratelimit.RateLimitedError as exc:
        return _too_many(request, exc)
    if approve:
        refused = second_factor.device_code_refused(request,
                                                    request.POST.get("user_code", "")[:20])
        if refused is not None:
            return refused
    done = actions.do_decide_device(request.user, request.POST.get("user_code", "")[:20],
                                    approve, ip)
    if not done:
        return render(request, "cmdop/device.html",
                      {"error": "That code is no longer valid."}, status=400)
    return render(request, "cmdop/device_done.html", {"approved": approve})


@login_required
@require_GET
def tokens(request: SignedInRequest) -> HttpResponse:
    families = TokenFamily.objects.filter(user=request.user).order_by("-created_at")
    keys = []
    for membership in request.user.memberships.select_related("workspace"):
        keys += list(ApiKey.objects.in_workspace(membership.workspace)
                     .filter(user=request.user).select_related("workspace"))
    key_workspaces = [m for m in request.user.memberships.select_related("workspace")
                      if can(m.role, Action.API_KEY_USE)]
    return render(request, "cmdop/tokens.html", {"families": families, "keys": keys,
                                                 "key_workspaces": key_workspaces})


@login_required
@require_POST
def revoke_family(request: SignedInRequest, family_id: int) -> HttpResponse:
    actions.do_revoke_family(request.user, family_id, "revoked_in_dashboard", client_ip(request))
    return redirect("tokens")


@login_required
@require_POST
def revoke_api_key(request: SignedInRequest, slug: str, key_id: int) -> HttpResponse:
    membership = request.user.memberships.select_related("workspace").filter(
        workspace__slug=slug).first()
    if membership is None:
        raise Http404
    try:
        actions.do_revoke_api_key(membership, key_id, client_ip(request))
    except ApiError as exc:
        raise Http404 from exc
    return redirect("tokens")


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


# The CSP allows scripts and styles only from files of our own origin; these are all of them.
# vendor/: xterm.js and its addons, built into the wheel from npm ci (server/hatch_build.py)
_ASSETS = {"cmdop.css": "text/css", "session.js": "text/javascript",
           "vendor/xterm.js": "text/javascript", "vendor/xterm.css": "text/css",
           "vendor/addon-fit.js": "text/javascript", "vendor/addon-canvas.js": "text/javascript"}
_ASSETS_DIR = Path(__file__).resolve().parent / "assets"


@cache
def _asset_bytes(name: str) -> bytes:
    return (_ASSETS_DIR / name).read_bytes()


@require_GET
def asset(request: HttpRequest, name: str) -> HttpResponse:
    if name not in _ASSETS:
        raise Http404
    response = HttpResponse(_asset_bytes(name), content_type=f"{_ASSETS[name]}; charset=utf-8")
    response["Cache-Control"] = "public, max-age=3600"
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    return render(request, "cmdop/500.html", status=500)
