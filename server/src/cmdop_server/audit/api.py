"""Audit export over the API, time-ranged and streamed (JSON lines or CSV):

- GET /api/v1/workspaces/{slug}/audit/export — the workspace's rows (Owner/Admin);
- GET /api/v1/workspaces/{slug}/audit/authentication/export — its members' authentication
  events (sign-ins and their failures, device flow, tokens), which belong to no workspace
  (Owner/Admin: the seed's "monitor authentication failures");
- GET /api/v1/audit/export — every row of the site that belongs to no workspace, for the
  site's administrators (``is_superuser``: the first owner ``bootstrap_owner`` made).

Every export is itself audited.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q
from django.http import StreamingHttpResponse
from ninja import Query, Router

from cmdop_server import audit
from cmdop_server.api.auth import CallerRequest, scoped, user
from cmdop_server.audit import export
from cmdop_server.errors import ApiError
from cmdop_server.identity.models import Membership
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action
from cmdop_server.textinput import Input

router = Router(tags=["audit"])
site_router = Router(tags=["audit"])


class ExportQuery(Input):
    since: datetime | None = None
    until: datetime | None = None
    format: str = "jsonl"


def _stream(request: CallerRequest, where: Q, query: ExportQuery, name: str,
            scope: str) -> StreamingHttpResponse:
    if query.format == "jsonl":
        body, ctype = export.jsonl(where, query.since, query.until), "application/x-ndjson"
    elif query.format == "csv":
        body, ctype = export.csv_lines(where, query.since, query.until), "text/csv"
    else:
        raise ApiError(400, "bad_request", "format is jsonl or csv.")
    audit.record("audit.export", user=request.auth.user, workspace=request.auth.workspace,
                 ip=client_ip(request), scope=scope, since=query.since, until=query.until,
                 format=query.format)
    response = StreamingHttpResponse(body, content_type=ctype)
    response["Content-Disposition"] = f'attachment; filename="{name}.{query.format}"'
    response["Cache-Control"] = "no-store"
    return response


@router.get("/{slug}/audit/export", auth=scoped(Action.AUDIT_VIEW))
def export_audit(request: CallerRequest, slug: str, query: Query[ExportQuery]):
    """Rows with since <= occurred_at < until, oldest first (``format``: jsonl or csv)."""
    ws = request.auth.workspace
    assert ws is not None  # scoped() resolved the membership
    return _stream(request, export.of_workspace(ws.pk), query, f"audit-{ws.slug}", "workspace")


@router.get("/{slug}/audit/authentication/export", auth=scoped(Action.AUDIT_VIEW))
def export_member_authentication(request: CallerRequest, slug: str,
                                 query: Query[ExportQuery]):
    """The authentication events of the workspace's members (present members; same filters
    and formats as the workspace export)."""
    ws = request.auth.workspace
    assert ws is not None
    members = list(Membership.objects.in_workspace(ws).values_list("user_id", flat=True))
    return _stream(request, export.authentication_of(members), query,
                   f"audit-{ws.slug}-authentication", "authentication")


@site_router.get("/export", auth=user)
def export_site(request: CallerRequest, query: Query[ExportQuery]):
    """Every row that belongs to no workspace (authentication events of everyone, including
    failures that name no known user); site administrators only."""
    if not request.auth.user.is_superuser:
        raise ApiError(403, "forbidden", "Only the site's administrators export its audit rows.")
    return _stream(request, export.of_site(), query, "audit-site", "site")
