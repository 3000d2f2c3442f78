"""``cmdop-server installer_state --workspace SLUG``: what the installer must still do, in one
process: ``migrations default=current|pending audit=… owner=present|absent``.

A deploy reads this once instead of starting Django for each question (each start costs
most of a second on a small host).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import connections
from django.db.migrations.executor import MigrationExecutor

from cmdop_server.identity.models import Workspace


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("--workspace", required=True, help="workspace slug")

    def handle(self, *args, workspace: str, **options) -> None:
        states = []
        for alias in ("default", "audit"):
            executor = MigrationExecutor(connections[alias])
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
            states.append(f"{alias}={'pending' if plan else 'current'}")
        owner = "absent"
        if "pending" not in states[0]:
            owner = "present" if Workspace.objects.filter(slug=workspace).exists() else "absent"
        self.stdout.write(" ".join([*states, f"owner={owner}"]))
