"""``cmdop-server issue_join_tokens --workspace SLUG --count N --ttl S``: single-use join
tokens for the installer's agent rollout, one per line on stdout (and nowhere else).

Issued in the name of the workspace's first Owner, through the same ``do_create_join_token``
action as the API, so each token is audited and stored only as a hash.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cmdop_server.identity.models import Membership
from cmdop_server.machines.actions import do_create_join_token
from cmdop_server.permissions import Role


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("--workspace", required=True, help="workspace slug")
        parser.add_argument("--count", type=int, default=1)
        parser.add_argument("--ttl", type=int, default=900, help="seconds (60..604800)")

    def handle(self, *args, workspace: str, count: int, ttl: int, **options) -> None:
        if not 1 <= count <= 1000:
            raise CommandError("--count must be between 1 and 1000")
        owner = (
            Membership.unscoped.select_related("workspace", "user")
            .filter(workspace__slug=workspace, role=Role.OWNER)
            .order_by("pk")
            .first()
        )
        if owner is None:
            raise CommandError(f"workspace {workspace!r} has no owner (run bootstrap_owner)")
        for i in range(count):
            _, raw = do_create_join_token(
                owner, name=f"installer rollout {i + 1}/{count}", ttl_seconds=ttl, usage_limit=1
            )
            self.stdout.write(raw)
