"""What every workspace page of the dashboard shares: the caller's membership, found by the
URL's slug and checked as the API does (a guest only while the workspace has guests enabled,
then the workspace role table), and refusals
shown as a plain page with their sentence."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import render

from cmdop_server import ratelimit
from cmdop_server.api.auth import refuse_disabled_guest
from cmdop_server.errors import ApiError
from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.identity.models import Membership
from cmdop_server.permissions import Action, can


def membership(request: SignedInRequest, slug: str, action: Action) -> Membership:
    found = (Membership.unscoped.select_related("workspace", "user")
             .filter(workspace__slug=slug, user=request.user).first())
    if found is None:
        raise Http404("No such workspace.")
    refuse_disabled_guest(found)
    if not can(found.role, action):
        raise ApiError(403, "forbidden", f"Your role may not {action}.")
    return found


def page_errors(view):
    """ApiError (refused, invalid) becomes a plain page with its sentence, never a trace;
    a rate limit, the 429 page with Retry-After."""
    def wrapped(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ratelimit.RateLimitedError as exc:
            response = render(request, "cmdop/429.html", {"retry_after": exc.retry_after},
                              status=429)
            response["Retry-After"] = str(exc.retry_after)
            return response
        except ApiError as exc:
            if exc.status == 404:
                raise Http404(exc.detail) from None
            return render(request, "cmdop/refused.html", {"detail": exc.detail},
                          status=exc.status)
    return wrapped
