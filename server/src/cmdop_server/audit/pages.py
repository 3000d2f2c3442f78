"""The dashboard's audit log page: the workspace's events, or its members' authentication
events (sign-ins and failures with IP and method: they belong to no workspace), filtered,
and their export (itself audited, as the API's)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import path
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET

from cmdop_server import audit
from cmdop_server.audit import AUDIT_DB, export
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity.authn import SignedInRequest
from cmdop_server.identity.models import Membership
from cmdop_server.netinfo import client_ip
from cmdop_server.permissions import Action
from cmdop_server.web import dashboard


@login_required
@require_GET
@dashboard.page_errors
def audit_log(request: SignedInRequest, slug: str) -> HttpResponse | StreamingHttpResponse:
    membership = dashboard.membership(request, slug, Action.AUDIT_VIEW)
    ws = membership.workspace
    since = parse_datetime(request.GET.get("since", "") or "") or None
    until = parse_datetime(request.GET.get("until", "") or "") or None
    members = request.GET.get("scope") == "authentication"
    if members:
        where = export.authentication_of(
            list(Membership.objects.in_workspace(ws).values_list("user_id", flat=True)))
    else:
        where = export.of_workspace(ws.pk)
    rows = AuditEvent.objects.using(AUDIT_DB).filter(where)
    if request.GET.get("event"):
        rows = rows.filter(event__startswith=request.GET["event"][:64])
    if request.GET.get("success") in ("true", "false"):
        rows = rows.filter(success=request.GET["success"] == "true")
    if since:
        rows = rows.filter(occurred_at__gte=since)
    if until:
        rows = rows.filter(occurred_at__lt=until)
    if request.GET.get("export") in ("jsonl", "csv"):
        fmt = request.GET["export"]
        audit.record("audit.export", user=request.user, workspace=ws, ip=client_ip(request),
                     scope="members_authentication" if members else "workspace",
                     since=str(since or ""), until=str(until or ""), format=fmt)
        body = (export.jsonl if fmt == "jsonl" else export.csv_lines)(where, since, until)
        response = StreamingHttpResponse(
            body, content_type="application/x-ndjson" if fmt == "jsonl" else "text/csv")
        response["Content-Disposition"] = f'attachment; filename="audit-{ws.slug}.{fmt}"'
        return response
    return render(request, "cmdop/audit.html", {
        "workspace": ws, "rows": rows.order_by("-id")[:200], "filters": request.GET})


urlpatterns = [
    path("audit/", audit_log, name="dash-audit"),
]
