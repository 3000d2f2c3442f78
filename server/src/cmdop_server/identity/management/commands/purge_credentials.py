"""Delete dead credentials: finished or expired device authorizations, and token families
whose every refresh token expired (or that were revoked) more than a day ago."""

from django.core.management.base import BaseCommand

from cmdop_server.identity import actions


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options) -> None:
        devices, families = actions.do_purge_dead_credentials()
        self.stdout.write(f"purged {devices} device authorizations, {families} token families")
