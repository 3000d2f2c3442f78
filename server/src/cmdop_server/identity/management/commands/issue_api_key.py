"""``cmdop-server issue_api_key --workspace SLUG --name NAME``: an API key of the workspace's
first Owner, printed once as ``<id> <key>`` on stdout (the installer's demo uses it and
revokes it through the API when done). Created through ``do_create_api_key``: audited, stored
only as a hash."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from cmdop_server.identity.actions import do_create_api_key
from cmdop_server.identity.models import Membership
from cmdop_server.permissions import Role


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("--workspace", required=True, help="workspace slug")
        parser.add_argument("--name", required=True, help="what the key is for")

    def handle(self, *args, workspace: str, name: str, **options) -> None:
        owner = (
            Membership.unscoped.select_related("workspace", "user")
            .filter(workspace__slug=workspace, role=Role.OWNER)
            .order_by("pk")
            .first()
        )
        if owner is None:
            raise CommandError(f"workspace {workspace!r} has no owner (run bootstrap_owner)")
        key, raw = do_create_api_key(owner, name)
        self.stdout.write(f"{key.pk} {raw}")
