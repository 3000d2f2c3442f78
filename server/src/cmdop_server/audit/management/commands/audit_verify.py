"""Prove the audit hash chains: exit 0 when every link holds, 1 naming each broken row."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cmdop_server.audit import AUDIT_DB, chain
from cmdop_server.audit.models import AuditEvent


class Command(BaseCommand):
    help = "Verify the audit log's hash chain (all workspaces, or --workspace-id)."

    def add_arguments(self, parser):
        parser.add_argument("--workspace-id", type=int)
        parser.add_argument("--database", default=AUDIT_DB)

    def handle(self, *args, workspace_id=None, database=AUDIT_DB, **options):
        rows = AuditEvent.objects.using(database).order_by("workspace_id", "id")
        if workspace_id is not None:
            rows = rows.filter(workspace_id=workspace_id)
        breaks = chain.verify(rows.iterator(chunk_size=2000))
        count = rows.count()
        for b in breaks:
            self.stderr.write(f"audit row {b.row_id} (workspace {b.workspace_id}): {b.problem}")
        if breaks:
            raise CommandError(f"audit chain broken at {len(breaks)} place(s)")
        self.stdout.write(f"audit chain intact: {count} rows")
