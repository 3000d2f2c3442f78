"""Audit export: one set of rows (a workspace's; its members' authentication events; the
site's rows that belong to no workspace), one time range, streamed as JSON lines or CSV so
that a year of rows never sits in memory. Rows carry their chain hashes (an export of a
workspace, or of the site's rows, can be re-verified offline with ``chain.verify``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from django.db.models import Q

from cmdop_server.audit import AUDIT_DB

COLUMNS = ("id", "occurred_at", "event", "success", "workspace_id", "user_id", "user_label",
           "method", "ip", "reason", "data", "prev_hash", "row_hash")


def of_workspace(workspace_id: int) -> Q:
    return Q(workspace_id=workspace_id)


def authentication_of(user_ids: list[int]) -> Q:
    """Sign-ins, failed sign-ins, device-flow, token and credential events of these users:
    they belong to no workspace (a person signs in to the site, not to a workspace)."""
    return Q(workspace_id__isnull=True, event__startswith="auth.", user_id__in=user_ids)


def of_site() -> Q:
    """Every row that belongs to no workspace: all authentication events, including failures
    that name no known user, refused enrollments, credential purges."""
    return Q(workspace_id__isnull=True)


def rows(where: Q, since, until):
    from cmdop_server.audit.models import AuditEvent

    qs = AuditEvent.objects.using(AUDIT_DB).filter(where)
    if since is not None:
        qs = qs.filter(occurred_at__gte=since)
    if until is not None:
        qs = qs.filter(occurred_at__lt=until)
    return qs.order_by("id").iterator(chunk_size=1000)


def _record(row) -> dict:
    return {c: getattr(row, c) for c in COLUMNS} | {
        "occurred_at": row.occurred_at.isoformat(timespec="microseconds")}


def jsonl(where: Q, since, until) -> Iterator[bytes]:
    for row in rows(where, since, until):
        yield json.dumps(_record(row), separators=(",", ":")).encode() + b"\n"


def csv_lines(where: Q, since, until) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in rows(where, since, until):
        record = _record(row)
        record["data"] = json.dumps(record["data"], sort_keys=True)
        writer.writerow([_safe_cell(record[c]) for c in COLUMNS])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


def _safe_cell(value):
    # a cell starting with = + - @ would run as a formula in a spreadsheet (CSV injection)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return "" if value is None else value
