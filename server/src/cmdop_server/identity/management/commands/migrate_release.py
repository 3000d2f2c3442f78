"""``cmdop-server migrate_release``: every pending migration of both databases, all or none.

Django's ``migrate`` commits each migration by itself, so a release whose second migration
fails would leave its first one applied. Here both databases migrate inside one transaction
each (every migration a savepoint in it: Postgres has transactional DDL), committed only
once both have migrated; a failure rolls both back, and the previous release keeps serving
on the schema it had (docs/upgrades.md). A migration that cannot run in a transaction
(``atomic = False``, e.g. ``CREATE INDEX CONCURRENTLY``) fails here: a release must not
bring one.
"""

from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options) -> None:
        verbosity = options["verbosity"]
        with transaction.atomic(using="default"), transaction.atomic(using="audit"):
            for alias in ("default", "audit"):
                call_command("migrate", database=alias, interactive=False, verbosity=verbosity)
