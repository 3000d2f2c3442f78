"""``cmdop-server machine_credentials --workspace SLUG [--open --grace S|--close|--cancel]``:
move every agent of the workspace to a new machine credential without taking it offline.

``--open`` opens a handover on each enabled join-token machine (a rerun keeps the open
ones' deadline): the agent gets its new credential in its next heartbeat reply, writes it
and confirms by using it; the old one is refused from then on. ``--close`` ends the grace
now: a machine that has not confirmed lapses (both credentials refused until an Admin
issues one). ``--cancel`` (a rollback) closes the open handovers without lapsing anyone.
Either way, and alone, it prints every machine as one JSON line (hostname, machine_id,
online, credential state, handover deadline, last rotation) for the installer; no
credential ever reaches its output. Run in the name of the workspace's first Owner, as
``issue_join_tokens`` is, through the same audited actions an API would use.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from cmdop_server.errors import ApiError
from cmdop_server.identity.models import Membership
from cmdop_server.machines import actions
from cmdop_server.machines.models import Machine
from cmdop_server.permissions import Role


def _iso(value) -> str | None:
    return value.isoformat() if value else None


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("--workspace", required=True, help="workspace slug")
        what = parser.add_mutually_exclusive_group()
        what.add_argument("--open", action="store_true", dest="open_handovers",
                          help="open a handover on each agent")
        what.add_argument("--close", action="store_true", dest="close_handovers",
                          help="end the grace period now")
        what.add_argument("--cancel", action="store_true", dest="cancel_handovers",
                          help="stop handing out new credentials (a rollback)")
        parser.add_argument("--grace", type=int, default=24 * 3600,
                            help="seconds an agent has to take its new credential (--open)")

    def handle(self, *args, workspace: str, open_handovers: bool, close_handovers: bool,
               cancel_handovers: bool, grace: int, **options) -> None:
        owner = (Membership.unscoped.select_related("workspace", "user")
                 .filter(workspace__slug=workspace, role=Role.OWNER).order_by("pk").first())
        if owner is None:
            raise CommandError(f"workspace {workspace!r} has no owner (run bootstrap_owner)")
        try:
            if open_handovers:
                actions.do_open_credential_handovers(owner, grace)
            elif close_handovers:
                actions.do_close_credential_handovers(owner)
            elif cancel_handovers:
                actions.do_cancel_credential_handovers(owner)
        except ApiError as exc:
            raise CommandError(exc.detail) from None
        now = timezone.now()
        for m in Machine.objects.in_workspace(owner.workspace).order_by("hostname"):
            self.stdout.write(json.dumps({
                "hostname": m.hostname, "machine_id": m.public_id, "online": m.online,
                "credential": actions.credential_state(m, now),
                "handover_until": _iso(m.credential_handover_until),
                "rotated_at": _iso(m.credential_rotated_at or m.enrolled_at),
            }))
