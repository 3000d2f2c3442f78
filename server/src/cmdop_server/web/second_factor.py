"""Pages of the second factor: the sign-in's second step (or, where a workspace requires
2FA, enrolment before the sign-in completes), the account's 2FA page (enrol with a QR code,
recovery codes shown once, turn off) and the owner's per-workspace rule. No JavaScript."""

from __future__ import annotations

import time

from django.contrib.auth import login as auth_login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from cmdop_server import audit, ratelimit
from cmdop_server.errors import ApiError
from cmdop_server.identity import totp
from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.identity.models import Membership, TotpDevice, User
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Role

PENDING = "cmdop_2fa_pending"


def _too_many(request: HttpRequest, exc: ratelimit.RateLimitedError) -> HttpResponse:
    response = render(request, "cmdop/429.html", {"retry_after": exc.retry_after}, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


def defer_sign_in(request: HttpRequest, user: User, next_url: str) -> HttpResponse | None:
    """After a right password: the second step when the user has a second factor or a
    workspace of theirs requires one; None when the password is enough."""
    if not totp.has_second_factor(user) and not totp.required_by(user):
        return None
    request.session.cycle_key()
    request.session[PENDING] = {"user": user.pk, "at": time.time(), "next": next_url}
    return redirect("login-2fa")


def _pending_user(request: HttpRequest) -> tuple[User, str] | None:
    pending = request.session.get(PENDING)
    if not pending or time.time() - pending["at"] > totp.sign_in_window():
        return None
    user = User.objects.filter(pk=pending["user"], is_active=True).first()
    return (user, pending["next"]) if user else None


def _finish(request: HttpRequest, user: User, next_url: str, method: str) -> HttpResponse:
    request.session.pop(PENDING, None)
    auth_login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    audit.record("auth.login", user=user, method=method, ip=client_ip(request))
    safe = url_has_allowed_host_and_scheme(next_url, {request.get_host()},
                                           require_https=request.is_secure())
    return redirect(next_url if safe and next_url else "tokens")


@require_http_methods(["GET", "POST"])
def sign_in_second_step(request: HttpRequest) -> HttpResponse:
    found = _pending_user(request)
    if found is None:
        request.session.pop(PENDING, None)
        return redirect("login")
    user, next_url = found
    ip = client_ip(request)
    if not totp.has_second_factor(user):
        return _enrol_to_sign_in(request, user, next_url, ip)
    if request.method == "GET":
        return render(request, "cmdop/login_2fa.html", {})
    try:
        ok = totp.do_verify(user, request.POST.get("code", "")[:40], "sign_in", ip)
    except ratelimit.RateLimitedError as exc:
        return _too_many(request, exc)
    if not ok:
        return render(request, "cmdop/login_2fa.html",
                      {"error": "That code is not right. Try the next one."}, status=400)
    return _finish(request, user, next_url, "password+totp")


def _enrol_to_sign_in(request: HttpRequest, user: User, next_url: str,
                      ip: str | None) -> HttpResponse:
    """A workspace of the user requires 2FA and they have none: enrol first."""
    required = totp.required_by(user)
    if request.method == "GET" or "code" not in request.POST:
        # a reload shows the same secret: only a missing one is made (and audited)
        device = TotpDevice.objects.filter(user=user).first()
        return _enrol_page(request, user, device or totp.do_start_enrolment(user, ip),
                           required)
    try:
        codes = totp.do_confirm_enrolment(user, request.POST.get("code", "")[:40], ip)
    except ratelimit.RateLimitedError as exc:
        return _too_many(request, exc)
    except ApiError as exc:
        return render(request, "cmdop/login_2fa.html", {"error": exc.detail}, status=exc.status)
    if not codes:
        device = TotpDevice.objects.get(user=user)
        return _enrol_page(request, user, device, required, "That code is not right.")
    _finish(request, user, next_url, "password+totp_enrol")
    return _secret_page(request, "cmdop/recovery_codes.html", {"codes": codes, "next": next_url})


def _secret_page(request: HttpRequest, template: str, context: dict,
                 status: int = 200) -> HttpResponse:
    """A page showing a TOTP secret or recovery codes: kept by no cache, the browser's
    included (they are on this page only)."""
    response = render(request, template, context, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _enrol_page(request: HttpRequest, user: User, device: TotpDevice, required: list[str],
                error: str = "") -> HttpResponse:
    uri, svg = totp.provisioning(device, user)
    return _secret_page(request, "cmdop/two_factor_enrol.html",
                        {"qr_svg": svg, "secret": totp.secret_of(device), "uri": uri,
                         "required": required, "error": error}, status=400 if error else 200)


@login_required
@require_http_methods(["GET", "POST"])
def account(request: SignedInRequest) -> HttpResponse:
    """The user's 2FA: on/off, enrolment, and the rule of the workspaces they own."""
    user, ip = request.user, client_ip(request)
    if request.method == "POST":
        step = request.POST.get("step", "")
        try:
            if step == "start":
                return _enrol_page(request, user, totp.do_start_enrolment(user, ip), [])
            if step == "confirm":
                codes = totp.do_confirm_enrolment(user, request.POST.get("code", "")[:40], ip)
                if not codes:
                    return _enrol_page(request, user, TotpDevice.objects.get(user=user), [],
                                       "That code is not right.")
                return _secret_page(request, "cmdop/recovery_codes.html", {"codes": codes})
            if step == "disable":
                if not totp.do_verify(user, request.POST.get("code", "")[:40], "disable", ip):
                    return _account_page(request, "That code is not right.", 400)
                totp.do_disable(user, ip)
        except ratelimit.RateLimitedError as exc:
            return _too_many(request, exc)
        except ApiError as exc:
            return _account_page(request, exc.detail, exc.status)
        return redirect("two-factor")
    return _account_page(request)


def _account_page(request: SignedInRequest, error: str = "", status: int = 200) -> HttpResponse:
    owned = (Membership.unscoped.select_related("workspace")
             .filter(user=request.user, role=Role.OWNER).order_by("workspace__slug"))
    return render(request, "cmdop/two_factor.html", {
        "enabled": totp.has_second_factor(request.user), "owned": owned,
        "required": totp.required_by(request.user), "error": error}, status=status)


@login_required
@require_POST
def workspace_rule(request: SignedInRequest, slug: str) -> HttpResponse:
    membership = (Membership.unscoped.select_related("workspace", "user")
                  .filter(user=request.user, workspace__slug=slug).first())
    if membership is None:
        return _account_page(request, "No such workspace.", 404)
    try:
        totp.do_set_required(membership, request.POST.get("required") == "on",
                             client_ip(request))
    except ApiError as exc:
        return _account_page(request, exc.detail, exc.status)
    return redirect("two-factor")


def device_code_refused(request: SignedInRequest, user_code: str) -> HttpResponse | None:
    """Approving a device needs the second factor of a user who has one: None when the
    form's code is right (or none is needed), else the page that says why not."""
    if not totp.has_second_factor(request.user):
        return None
    try:
        if totp.do_verify(request.user, request.POST.get("otp", "")[:40], "device_approve",
                          client_ip(request)):
            return None
    except ratelimit.RateLimitedError as exc:
        return _too_many(request, exc)
    return render(request, "cmdop/device.html", {
        "user_code": user_code,
        "error": "The authentication code was not right; enter the device code again."},
        status=400)
