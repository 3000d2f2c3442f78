"""PostgreSQL from Debian's packages, hardened by our conf.d drop-in and pg_hba.conf.

Roles: one NOLOGIN owner and blue/green LOGIN roles (``roles.sql``, idempotent SQL). The
active role's password reaches the server only as a SCRAM-SHA-256 verifier, in a 0600 file
read by ``psql -f`` — never in argv, never in plaintext. A role is touched only when the
md5 of its stored verifier differs from ours, so a rerun changes nothing.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from cmdop_install.deploys.common import any_changed, extra, payload, put_files, temp_dir
from cmdop_install.deploys.ops import (
    postgres_password,
    postgres_restart_or_reload,
    postgres_sql,
)

PSQL = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1"
BACKUP_ETC = "/etc/cmdop-backup"
BACKUP_UNITS = ("cmdop-backup.service", "cmdop-backup.timer")


@deploy("PostgreSQL")
def postgres() -> None:
    pg = extra("postgres")
    conf_dir = f"/etc/postgresql/{pg['major']}/main"
    service = f"postgresql@{pg['major']}-main"
    tls = put_files("/etc/postgresql/tls", {"/etc/postgresql/tls": ("root", "postgres", "750")})
    conf = put_files(conf_dir) + put_files(f"{conf_dir}/conf.d")
    # our sandbox for Debian's postgresql@.service: applies from the next (re)start
    dropin = f"/etc/systemd/system/{service}.service.d"
    sandbox = put_files(dropin, {dropin: ("root", "root", "755")})
    systemd.daemon_reload(
        name="Reload systemd (PostgreSQL sandbox drop-in)", _if=any_changed(sandbox), _sudo=True
    )
    systemd.service(
        name="PostgreSQL enabled and running",
        service=service,
        running=True,
        enabled=True,
        _sudo=True,
    )
    systemd.service(
        name="Restart PostgreSQL (new sandbox)",
        service=service,
        restarted=True,
        _if=any_changed(sandbox),
        _sudo=True,
    )
    postgres_restart_or_reload(
        name="Restart or reload PostgreSQL for new settings",
        service=service,
        listen_addresses=pg["listen_addresses"],
        files_changed=any_changed(tls + conf),
        _sudo=True,
    )
    postgres_sql(
        name="Owner and blue/green roles, databases",
        check_sql=pg["roles_check_sql"],
        expected="t",
        commands=[f"{PSQL} -f {conf_dir}/cmdop-roles.sql"],
        what="roles and databases",
        force=any_changed(conf),
        _sudo=True,
    )
    for role in pg["passwords"]:
        postgres_password(
            name=f"Password of {role['name']} (a SCRAM verifier, never plaintext)",
            role=role["name"],
            verifier_md5=role["verifier_md5"],
            sql_src=str(payload() / role["sql_src"]),
            conf_dir=conf_dir,
            temp_dir=temp_dir(),
            psql=PSQL,
            _sudo=True,
        )
    backup(pg["backup"])


def backup(wanted: dict) -> None:
    """cmdop-backup (the script, its admin passfile) and, when [backup] schedule is set, its
    timer; `cmdop-install backup` runs the same script."""
    put_files(BACKUP_ETC, {BACKUP_ETC: ("root", "root", "700")})
    files.directory(name="Backup folder (root's, 0700)", path=wanted["directory"],
                    user="root", group="root", mode="700", present=True, _sudo=True)
    units = put_files("/etc/systemd/system", names=BACKUP_UNITS)
    systemd.daemon_reload(name="Reload systemd (backup units)", _if=any_changed(units),
                          _sudo=True)
    if wanted["timer"]:
        systemd.service(name="Backup timer", service="cmdop-backup.timer", running=True,
                        enabled=True, _sudo=True)
    else:
        # the units are not rendered any more; a timer left from an earlier deploy stops
        systemd.service(name="No backup timer", service="cmdop-backup.timer", running=False,
                        enabled=False, _sudo=True)
