"""Make the audit table append-only for the app's role (run as the audit DB's owner)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from cmdop_server.audit import AUDIT_DB, retention


class Command(BaseCommand):
    help = "REVOKE UPDATE/DELETE on audit rows from the app role; --print only shows the SQL."

    def add_arguments(self, parser):
        parser.add_argument("app_role")
        parser.add_argument("--database", default=AUDIT_DB)
        parser.add_argument("--print", action="store_true", dest="print_only")

    def handle(self, *args, app_role, database=AUDIT_DB, print_only=False, **options):
        if print_only:
            for statement in retention.grant_sql(app_role, database):
                self.stdout.write(statement + ";")
            return
        retention.apply_grants(app_role, database)
        self.stdout.write(f"audit rows are append-only for {app_role}")
