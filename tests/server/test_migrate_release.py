"""``migrate_release`` applies a release's migrations to both databases all or nothing, on the
real test Postgres. The whole upgrade (a real failing migration on a deployed site) is
tests/lab/test_day2_upgrade.py; here, what the command itself owns: the one transaction per
database, committed only when both have migrated."""

from __future__ import annotations

import pytest
from cmdop_server.identity.management.commands import migrate_release
from django.core.management import call_command
from django.db import connections

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(transaction=True, databases=["default", "audit"])]


def _tables(alias: str) -> list[str]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'release_probe%'")
        return [row[0] for row in cursor.fetchall()]


def _migrating_into(fail_on: str | None):
    """Django's migrate stood in by one that makes a table in the database it migrates,
    and fails on ``fail_on`` after making it."""

    def migrate(command: str, database: str, **options) -> None:
        assert command == "migrate" and options["interactive"] is False
        with connections[database].cursor() as cursor:
            cursor.execute(f"CREATE TABLE release_probe_{database} (id integer)")
        if database == fail_on:
            raise RuntimeError(f"a migration of {database} failed")

    return migrate


@pytest.mark.parametrize("fail_on", ["default", "audit"])
def test_a_failure_in_either_database_leaves_both_as_they_were(monkeypatch, fail_on) -> None:
    monkeypatch.setattr(migrate_release, "call_command", _migrating_into(fail_on))
    with pytest.raises(RuntimeError):
        call_command("migrate_release")
    assert _tables("default") == [] and _tables("audit") == []


def test_both_databases_migrated_commit_together(monkeypatch) -> None:
    call_command("migrate_release", verbosity=0)  # the real migrate: nothing pending here
    monkeypatch.setattr(migrate_release, "call_command", _migrating_into(None))
    try:
        call_command("migrate_release")
        assert _tables("default") == ["release_probe_default"]
        assert _tables("audit") == ["release_probe_audit"]
    finally:
        for alias in ("default", "audit"):
            with connections[alias].cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS release_probe_{alias}")
