"""``cmdop-server fleet_status --workspace SLUG``: every machine as one JSON line
(hostname, online, last_seen, agent_version, boot_id, os, credential state) for the
installer's status and rollout."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from cmdop_server.machines.actions import credential_state
from cmdop_server.machines.models import Machine


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("--workspace", required=True, help="workspace slug")

    def handle(self, *args, workspace: str, **options) -> None:
        machines = Machine.unscoped.filter(workspace__slug=workspace).order_by("hostname")
        for m in machines:
            self.stdout.write(
                json.dumps(
                    {
                        "hostname": m.hostname,
                        "online": m.online,
                        "last_seen": m.last_seen_at.isoformat() if m.last_seen_at else None,
                        "agent_version": m.agent_version,
                        # changes whenever the agent process restarts
                        "boot_id": m.boot_id,
                        "os": m.os,
                        # lapsed: refused until an Admin issues a new credential
                        "credential": credential_state(m),
                    }
                )
            )
