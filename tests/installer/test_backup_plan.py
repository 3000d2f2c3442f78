"""The backup and restore runs planned (dry run) on pyinfra's ``@fake`` hosts: their deploy
code runs in the unit tier, each operation on the hosts it belongs to and in the order that
keeps the databases untouched while anything could write to them."""

import pytest
from cmdop_install.backup import BACKUP_DEPLOY
from cmdop_install.restore import RESTORE_DEPLOY
from cmdop_install.runner import run_deploy
from cmdop_install.sitedir import SiteDir

from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.unit

FAKE = {"fake_delay": 0, "fake_delay_jitter": 0,
        "fake_responses": {"uname -s": "Linux", "echo ~": "/home/op"}}


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    with key_env():
        site = SiteDir.load(make_site(tmp_path_factory.mktemp("site") / "s", agents=True))
    return {group: [(f"@fake/{name}", FAKE) for name, _ in hosts]
            for group, hosts in site.inventory.pyinfra_groups().items()}


def _plan(groups, deploy: str, limit: list[str], data: dict) -> dict[str, list[str]]:
    result = run_deploy(groups, deploy, dry_run=True, limit=limit, data=data)
    assert result.failed == []
    return {name.removeprefix("@fake/"): [op.name for op in host.ops]
            for name, host in result.hosts.items()}


def test_backup_dumps_on_the_database_host_fetches_as_the_ssh_user_and_cleans_up(groups,
                                                                                  tmp_path):
    ops = _plan(groups, BACKUP_DEPLOY, ["@fake/node1"],
                {"cmdop_backup_fetch": str(tmp_path), "cmdop_backup_run": "r1"})
    assert [op.removeprefix("Backup | ") for op in ops["node1"]] == [
        "Private folder for this backup", "Dump the app and audit databases (cmdop-backup)",
        "Fetch app.dump", "Fetch audit.dump", "Fetch SHA256SUMS", "Remove the host's copy"]


def test_restore_replaces_the_databases_only_between_stop_and_start(groups, tmp_path):
    for name in ("app.dump", "audit.dump", "SHA256SUMS"):
        (tmp_path / name).write_bytes(b"x")
    ops = [op.removeprefix("Restore | ") for op in _plan(
        groups, RESTORE_DEPLOY, ["@fake/node1"],
        {"cmdop_restore_dumps": str(tmp_path), "cmdop_restore_run": "r1",
         "cmdop_restore_db_host": "@fake/node1", "cmdop_restore_grants": "true"})["node1"]]
    replace = ops.index("Replace the app and audit databases (cmdop-restore)")
    stops = [i for i, op in enumerate(ops) if op.endswith(" for the restore")]
    starts = [i for i, op in enumerate(ops) if op.startswith("Start cmdop-")]
    assert "Stop cmdop-server.service for the restore" in ops
    assert max(stops) < ops.index("Empty Redis (transient state only)") < replace < min(starts)
    assert replace < ops.index("Audit log append-only for the app") < min(starts)
