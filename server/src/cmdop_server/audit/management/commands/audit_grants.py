"""Make the audit log append-only for the app's role and set its retention (run as the
audit database's owner, after migrate)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cmdop_server.audit import AUDIT_DB, retention


class Command(BaseCommand):
    help = ("REVOKE UPDATE/DELETE on audit rows from the app role, let it run audit_purge(); "
            "--retention-days sets the period; --print only shows the SQL.")

    def add_arguments(self, parser):
        parser.add_argument("app_role")
        parser.add_argument("--retention-days", type=int)
        parser.add_argument("--database", default=AUDIT_DB)
        parser.add_argument("--print", action="store_true", dest="print_only")

    def handle(self, *args, app_role, retention_days=None, database=AUDIT_DB,
               print_only=False, **options):
        try:
            statements = retention.grant_sql(app_role, retention_days, database)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if print_only:
            for statement in statements:
                self.stdout.write(statement + ";")
            return
        retention.apply_grants(app_role, retention_days, database)
        self.stdout.write(f"audit rows are append-only for {app_role}")
