"""Retention (default 90 days, ``CMDOP_AUDIT_RETENTION_DAYS``) and the append-only grants.

The app's database role may only INSERT and SELECT audit rows: ``grant_sql`` is what the
installer runs as the audit database's owner. Pruning therefore runs as the owner (the
installer's systemd timer runs ``cmdop-server audit_prune --database <owner alias>``).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connections
from django.utils import timezone

from cmdop_server.audit import AUDIT_DB

TABLE = "audit_auditevent"


def cutoff(days: int | None = None):
    days = settings.CMDOP_AUDIT_RETENTION_DAYS if days is None else days
    if days < 1:
        raise ValueError("retention must be at least one day")
    return timezone.now() - timedelta(days=days)


def prune(days: int | None = None, using: str = AUDIT_DB) -> int:
    """Delete rows older than the retention period; returns how many."""
    from cmdop_server.audit.models import AuditEvent

    deleted, _ = AuditEvent.objects.using(using).filter(occurred_at__lt=cutoff(days)).delete()
    return deleted


def grant_sql(app_role: str, using: str = AUDIT_DB) -> list[str]:
    """Statements that make the audit table append-only for ``app_role``."""
    qn = connections[using].ops.quote_name
    role, table = qn(app_role), qn(TABLE)
    sequence = qn(f"{TABLE}_id_seq")
    return [
        f"REVOKE ALL ON {table} FROM {role}",
        f"GRANT SELECT, INSERT ON {table} TO {role}",
        f"GRANT USAGE ON SEQUENCE {sequence} TO {role}",
        f"REVOKE ALL ON {table} FROM PUBLIC",
    ]


def apply_grants(app_role: str, using: str = AUDIT_DB) -> None:
    with connections[using].cursor() as cursor:
        for statement in grant_sql(app_role, using):
            cursor.execute(statement)
