"""Retention and the append-only grants of the audit database.

- The app's role may only INSERT and SELECT audit rows (``grant_sql``; the installer runs
  ``cmdop-server audit_grants <app role> --retention-days N`` as the audit DB's owner, the
  role that ran the migrations). The owner must be a different role: an owner can always
  give itself UPDATE/DELETE back.
- Old rows go through ``audit_purge()`` (migration 0003), which the app's role may
  EXECUTE: it deletes only rows older than the owner-set ``audit_retention.days``, so a
  stolen app credential cannot shorten the log to nothing.
"""

from __future__ import annotations

from django.db import connections

from cmdop_server.audit import AUDIT_DB

TABLE = "audit_auditevent"


def purge(using: str = AUDIT_DB) -> int:
    """Delete rows older than the retention period; returns how many."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT audit_purge()")
        return int(cursor.fetchone()[0])


def retention_days(using: str = AUDIT_DB) -> int:
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT days FROM audit_retention WHERE id = 1")
        return int(cursor.fetchone()[0])


def grant_sql(app_role: str, retention_days: int | None = None,
              using: str = AUDIT_DB) -> list[str]:
    """Statements (run as the owner) that make the audit log append-only for ``app_role``."""
    qn = connections[using].ops.quote_name
    role, table = qn(app_role), qn(TABLE)
    statements = [
        f"REVOKE ALL ON {table} FROM PUBLIC",
        f"REVOKE ALL ON {table} FROM {role}",
        f"GRANT SELECT, INSERT ON {table} TO {role}",
        f"GRANT USAGE ON SEQUENCE {qn(TABLE + '_id_seq')} TO {role}",
        f"REVOKE ALL ON audit_retention FROM {role}",
        f"GRANT SELECT ON audit_retention TO {role}",
        f"GRANT EXECUTE ON FUNCTION audit_purge() TO {role}",
    ]
    if retention_days is not None:
        if retention_days < 1:
            raise ValueError("retention must be at least one day")
        days = int(retention_days)  # an int: nothing to inject
        statements.append(f"UPDATE audit_retention SET days = {days} WHERE id = 1")  # noqa: S608
    return statements


def apply_grants(app_role: str, retention_days: int | None = None,
                 using: str = AUDIT_DB) -> None:
    with connections[using].cursor() as cursor:
        for statement in grant_sql(app_role, retention_days, using):
            cursor.execute(statement)
