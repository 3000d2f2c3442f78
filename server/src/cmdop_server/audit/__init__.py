"""The audit module: ``record(event, …)`` is the only way anything writes an audit row.

Rows go to the separate ``audit`` database (``router.AuditRouter``). Audit writes fail
closed: ``action()`` commits an action's audit rows before the app's transaction, so an
action whose rows cannot be stored (audit database down, connection lost at commit)
raises and its change is rolled back — never done unrecorded. Each row is hash-chained per
workspace (``chain.py``; ``audit_verify`` proves it); ``purge_audit`` enforces retention;
``export.py`` streams rows as JSON lines or CSV.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.utils import timezone

AUDIT_DB = "audit"
CHAIN_LOCK = 0x617564  # advisory lock class for the audit chains ("aud")


def record(
    event: str,
    *,
    success: bool = True,
    user: Any = None,
    workspace: Any = None,
    method: str = "",
    ip: str | None = None,
    reason: str = "",
    **data: Any,
):
    """Store one audit event. Callers pass ids and labels, never credentials.

    The row is linked into its workspace's hash chain (``chain.py``); an advisory lock per
    chain, held until the audit transaction commits, keeps concurrent writers in order.
    """
    from cmdop_server import metrics, netinfo
    from cmdop_server.audit import chain
    from cmdop_server.audit.models import AuditEvent

    row = AuditEvent(
        occurred_at=timezone.now(),
        event=event,
        success=success,
        user_id=getattr(user, "pk", user) if user is not None else None,
        user_label=getattr(user, "username", "") or "",
        workspace_id=getattr(workspace, "pk", workspace) if workspace is not None else None,
        method=method,
        # the request's client address unless the caller names one (the seed: IP per row)
        ip=ip or netinfo.current_client_ip() or None,
        reason=reason,
        data=json.loads(json.dumps(data, default=str)),  # exactly what jsonb will hand back
    )
    if not success and (event.startswith("auth.") or event == "machine.enroll"):
        metrics.inc("cmdop_auth_failures_total", event=event, reason=reason)
    try:
        with transaction.atomic(using=AUDIT_DB):
            with connections[AUDIT_DB].cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                               [CHAIN_LOCK, row.workspace_id or 0])
            last = (AuditEvent.objects.using(AUDIT_DB).filter(workspace_id=row.workspace_id)
                    .order_by("-id").values_list("row_hash", flat=True).first())
            row.prev_hash = last or chain.GENESIS
            row.row_hash = chain.link(row.prev_hash, row)
            row.save(using=AUDIT_DB)
    except DatabaseError:
        metrics.inc("cmdop_audit_write_failures_total", stage="write")
        raise
    return row


@contextlib.contextmanager
def action() -> Iterator[None]:
    """One state change: the audit transaction inside the app's durable transaction, so
    the audit rows commit first and the change only after them.

    Two databases cannot commit atomically without two-phase commit, so the order decides
    what a failure between the two commits leaves: the audit rows first means at worst
    rows for a change that then failed to commit (they say what was attempted), never a
    change without its rows. Anything raised inside rolls both back. The app's transaction
    is durable so that no caller's outer transaction can hold the change back.
    """
    from cmdop_server import metrics

    body_raised = False
    with transaction.atomic(using="default", durable=True):
        try:
            with transaction.atomic(using=AUDIT_DB):
                try:
                    yield
                except BaseException:
                    body_raised = True
                    raise
        except DatabaseError:
            if not body_raised:  # the rows were written but their commit failed
                metrics.inc("cmdop_audit_write_failures_total", stage="commit")
            raise
