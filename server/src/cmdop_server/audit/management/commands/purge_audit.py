"""Delete audit rows older than the retention period (the installer's daily timer).

Runs as the app's role: it calls ``audit_purge()``, which deletes only rows older than the
retention the audit DB's owner set (``audit_grants --retention-days``)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from cmdop_server.audit import AUDIT_DB, retention


class Command(BaseCommand):
    help = "Delete audit rows older than the audit database's retention period."

    def add_arguments(self, parser):
        parser.add_argument("--database", default=AUDIT_DB)

    def handle(self, *args, database=AUDIT_DB, **options):
        days = retention.retention_days(database)
        if days != settings.CMDOP_AUDIT_RETENTION_DAYS:
            self.stderr.write(f"note: the audit database keeps {days} days, server.toml says "
                              f"{settings.CMDOP_AUDIT_RETENTION_DAYS}; re-run audit_grants")
        deleted = retention.purge(database)
        self.stdout.write(f"deleted {deleted} audit rows older than {days} days")
