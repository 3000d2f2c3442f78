"""Delete audit rows older than the retention period (run daily by the installer's timer)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cmdop_server.audit import AUDIT_DB, retention


class Command(BaseCommand):
    help = "Delete audit rows older than CMDOP_AUDIT_RETENTION_DAYS (or --days)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int)
        parser.add_argument(
            "--database",
            default=AUDIT_DB,
            help="an alias whose role may DELETE (the app role may not)",
        )

    def handle(self, *args, days=None, database=AUDIT_DB, **options):
        try:
            deleted = retention.prune(days, using=database)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"deleted {deleted} audit rows older than the retention period")
