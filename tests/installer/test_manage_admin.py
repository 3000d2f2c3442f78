"""The installer's admin path (docs/server-config.md): migrations run with each database's
admin login, whose passwords only the installer's systemd-run loads, never the service."""

import re
from pathlib import Path

import pytest
from cmdop_install import manage

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden" / "node1" / "etc"


def _credentials(command: str) -> dict[str, str]:
    found = re.findall(r"-p LoadCredential=(\w+):(\S+)", command)
    assert len(found) == len({name for name, _ in found}), "a credential loaded twice"
    return dict(found)


def test_the_admin_command_logs_in_as_each_databases_admin():
    admin = _credentials(manage.manage_command("migrate", audit_admin=True))
    for name in ("db_password", "audit_db_password"):  # file paths, not values
        assert admin[name] == f"/etc/cmdop/admin/credentials/{name}"
    assert "CMDOP_SERVER_TOML=/etc/cmdop/admin/server.toml" in manage.manage_command(
        "migrate", audit_admin=True)


def test_the_service_and_its_commands_never_load_an_admin_password():
    assert all("/etc/cmdop/admin" not in path
               for path in _credentials(manage.manage_command("purge_audit")).values())
    for unit in (GOLDEN / "systemd/system").glob("cmdop-*.service"):
        assert "/etc/cmdop/admin" not in unit.read_text(), unit.name
    admin_toml = (GOLDEN / "cmdop/admin/server.toml").read_text()
    service_toml = (GOLDEN / "cmdop/server.toml").read_text()
    assert 'user = "cmdop_admin"' in admin_toml and "cmdop_admin" not in service_toml
