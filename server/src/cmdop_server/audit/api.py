"""GET /api/v1/workspaces/{slug}/audit/export — time-ranged, workspace-scoped, streamed."""

from __future__ import annotations

from datetime import datetime

from django.http import StreamingHttpResponse
from ninja import Query, Router

from cmdop_server import audit
from cmdop_server.api.auth import scoped
from cmdop_server.audit import export
from cmdop_server.errors import ApiError
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action
from cmdop_server.textinput import Input

router = Router(tags=["audit"])


class ExportQuery(Input):
    since: datetime | None = None
    until: datetime | None = None
    format: str = "jsonl"


@router.get("/{slug}/audit/export", auth=scoped(Action.AUDIT_VIEW))
def export_audit(request, slug: str, query: Query[ExportQuery]):
    """Rows with since <= occurred_at < until, oldest first (``format``: jsonl or csv)."""
    ws = request.auth.workspace
    if query.format == "jsonl":
        body, ctype = export.jsonl(ws.pk, query.since, query.until), "application/x-ndjson"
    elif query.format == "csv":
        body, ctype = export.csv_lines(ws.pk, query.since, query.until), "text/csv"
    else:
        raise ApiError(400, "bad_request", "format is jsonl or csv.")
    audit.record("audit.export", user=request.auth.user, workspace=ws, ip=client_ip(request),
                 since=query.since, until=query.until, format=query.format)
    response = StreamingHttpResponse(body, content_type=ctype)
    response["Content-Disposition"] = f'attachment; filename="audit-{ws.slug}.{query.format}"'
    response["Cache-Control"] = "no-store"
    return response
