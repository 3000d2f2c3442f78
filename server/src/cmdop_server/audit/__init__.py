"""The audit module: ``record(event, …)`` is the only way anything writes an audit row.

Rows go to the separate ``audit`` database (``router.AuditRouter``). ``action()`` opens the
audit transaction around the app's durable transaction, so a ``do_*`` action and its audit
row commit together, and if the audit store is down the action fails instead of happening
unrecorded. Issue 5 adds the hash chain, retention and export on top of this interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.db import transaction

AUDIT_DB = "audit"


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
    """Store one audit event. Callers pass ids and labels, never credentials."""
    from cmdop_server.audit.models import AuditEvent

    return AuditEvent.objects.using(AUDIT_DB).create(
        event=event,
        success=success,
        user_id=getattr(user, "pk", user) if user is not None else None,
        user_label=getattr(user, "username", "") or "",
        workspace_id=getattr(workspace, "pk", workspace) if workspace is not None else None,
        method=method,
        ip=ip,
        reason=reason,
        data=data,
    )


@contextlib.contextmanager
def action() -> Iterator[None]:
    """One state change: app transaction (durable) inside the audit transaction."""
    with transaction.atomic(using=AUDIT_DB), transaction.atomic(using="default", durable=True):
        yield
