"""The caller's own identity and OAuth grants (not workspace-owned)."""

from __future__ import annotations

from django.db.models import Max
from ninja import Router, Status

from cmdop_server.api import auth
from cmdop_server.api.schemas import MeOut, TokenFamilyOut
from cmdop_server.identity import actions
from cmdop_server.identity.models import TokenFamily
from cmdop_server.netinfo import client_ip

router = Router(tags=["me"])


@router.get("/me", auth=auth.user, response=MeOut)
def me(request):
    return {"id": request.auth.user.pk, "username": request.auth.user.username,
            "method": request.auth.principal.method}


@router.get("/tokens", auth=auth.user, response=list[TokenFamilyOut])
def list_tokens(request):
    families = (TokenFamily.objects.filter(user=request.auth.user)
                .annotate(last_used_at=Max("access__last_used_at")).order_by("-created_at"))
    return list(families)


@router.delete("/tokens/{family_id}", auth=auth.user, response={204: None})
def revoke_token(request, family_id: int):
    actions.do_revoke_family(request.auth.user, family_id, "revoked_by_user", client_ip(request))
    return Status(204, None)
