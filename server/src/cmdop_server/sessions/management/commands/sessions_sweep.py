"""Mark sessions of machines that stopped heart-beating as disconnected (run every minute)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from cmdop_server.sessions.actions import do_disconnect_silent_machines


class Command(BaseCommand):
    help = "Sessions of machines silent for three heartbeat intervals become disconnected."

    def handle(self, *args, **options):
        self.stdout.write(f"disconnected {do_disconnect_silent_machines()} sessions")
