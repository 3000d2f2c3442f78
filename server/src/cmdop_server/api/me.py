"""The caller's own identity and OAuth grants (not workspace-owned)."""

from __future__ import annotations

from django.db.models import Max
from ninja import Router, Status

from cmdop_server.api import auth
from cmdop_server.api.schemas import MeOut, TokenFamilyOut
from cmdop_server.errors import ApiError
from cmdop_server.identity import actions
from cmdop_server.identity.models import TokenFamily
from cmdop_server.netinfo import client_ip

router = Router(tags=["me"])


@router.get("/me", auth=auth.user, response=MeOut)
def me(request):
    return {"id": request.auth.user.pk, "username": request.auth.user.username,
            "method": request.auth.principal.method}


def _not_an_api_key(request) -> None:
    """A person's logins belong to no workspace; an API key acts in its own one only."""
    if request.auth.principal.workspace is not None:
        raise ApiError(403, "forbidden", "An API key acts in its own workspace only: manage "
                       "your logins signed in (cmdop login, or the dashboard's tokens page).")


@router.get("/tokens", auth=auth.user, response=list[TokenFamilyOut])
def list_tokens(request):
    _not_an_api_key(request)
    families = (TokenFamily.objects.filter(user=request.auth.user)
                .annotate(last_used_at=Max("access__last_used_at")).order_by("-created_at"))
    return list(families)


@router.delete("/tokens/{family_id}", auth=auth.user, response={204: None})
def revoke_token(request, family_id: int):
    _not_an_api_key(request)
    actions.do_revoke_family(request.auth.user, family_id, "revoked_by_user", client_ip(request))
    return Status(204, None)
