"""Audit export: one workspace, one time range, streamed as JSON lines or CSV so that a
year of rows never sits in memory. Rows carry their chain hashes (an export can be
re-verified offline with ``chain.verify``)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from cmdop_server.audit import AUDIT_DB

COLUMNS = ("id", "occurred_at", "event", "success", "workspace_id", "user_id", "user_label",
           "method", "ip", "reason", "data", "prev_hash", "row_hash")


def rows(workspace_id: int, since, until):
    from cmdop_server.audit.models import AuditEvent

    qs = AuditEvent.objects.using(AUDIT_DB).filter(workspace_id=workspace_id)
    if since is not None:
        qs = qs.filter(occurred_at__gte=since)
    if until is not None:
        qs = qs.filter(occurred_at__lt=until)
    return qs.order_by("id").iterator(chunk_size=1000)


def _record(row) -> dict:
    return {c: getattr(row, c) for c in COLUMNS} | {
        "occurred_at": row.occurred_at.isoformat(timespec="microseconds")}


def jsonl(workspace_id: int, since, until) -> Iterator[bytes]:
    for row in rows(workspace_id, since, until):
        yield json.dumps(_record(row), separators=(",", ":")).encode() + b"\n"


def csv_lines(workspace_id: int, since, until) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in rows(workspace_id, since, until):
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
