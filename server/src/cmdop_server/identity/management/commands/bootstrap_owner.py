"""``cmdop-server bootstrap_owner --email E --workspace SLUG``: the site's first Owner, once.

The installer runs it on every deploy; it creates the user (the site's administrator) and
the workspace only when the workspace does not exist yet, and never changes an existing
account (so a password the owner changed stays changed). The password is read from stdin,
never argv.
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from cmdop_server.identity.actions import do_create_workspace
from cmdop_server.identity.models import User, Workspace

MIN_PASSWORD = 16


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("--email", required=True)
        parser.add_argument("--workspace", required=True, help="workspace slug")
        parser.add_argument(
            "--check", action="store_true", help="print 'present' or 'absent'; change nothing"
        )

    def handle(self, *args, email: str, workspace: str, check: bool, **options) -> None:
        exists = Workspace.objects.filter(slug=workspace).exists()
        if check:
            self.stdout.write("present" if exists else "absent")
            return
        if exists:
            self.stdout.write(f"workspace {workspace} exists; nothing to do")
            return
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < MIN_PASSWORD:
            raise CommandError(f"the owner password on stdin must have {MIN_PASSWORD}+ characters")
        # do_create_workspace is its own durable transaction (with its audit row); a user
        # left without a workspace by a failure here is found again by e-mail on the rerun
        user = User.objects.filter(email=email).first()
        if user is None:
            # the site's first owner is its administrator (the site-wide audit export)
            user = User(username=email, email=email, is_superuser=True)
            user.set_password(password)
            user.save()
        do_create_workspace(user, workspace, workspace)
        self.stdout.write(f"created owner {email} of workspace {workspace}")
