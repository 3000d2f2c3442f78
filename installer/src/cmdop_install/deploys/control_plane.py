"""The control plane: cmdop_server in a virtualenv from our wheels, under gunicorn and systemd.

A new release is installed beside the one serving, migrated with (expand-only, all or
nothing), and only then switched to and handed to gunicorn by a graceful HUP; a failed
migration stops the deploy before the switch, so the previous release keeps serving
(docs/upgrades.md).

Management commands (migrate, collectstatic) run through ``systemd-run`` with the same
user, credentials (``LoadCredential=``) and settings as the service, so secrets never
appear in argv or the environment and no command runs as root inside Django.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import server, systemd

from cmdop_install.deploys.common import any_changed, extra, payload, put_files, temp_dir
from cmdop_install.deploys.facts import InstallerState
from cmdop_install.deploys.ops import (
    control_plane_database,
    prefetch,
    server_release,
    server_restart,
    server_switch,
)
from cmdop_install.manage import ADMIN_DIR as ADMIN
from cmdop_install.manage import SERVER_ROOT, manage_command, server_release_venv

SOCKET = "cmdop-server.socket"
UNITS = (
    SOCKET,
    "cmdop-server.service",
    "cmdop-audit-retention.service",
    "cmdop-audit-retention.timer",
    "cmdop-sessions-sweep.service",
    "cmdop-sessions-sweep.timer",
)
# timer -> what it does (each runs a management command as the service does)
TIMERS = {
    "cmdop-audit-retention.timer": "Audit retention timer",
    "cmdop-sessions-sweep.timer": "Sessions sweep timer (every minute)",
}


@deploy("Control plane")
def control_plane() -> None:
    cp = extra("control_plane")
    owner, wheelhouse = cp["owner"], cp["wheelhouse"]
    # the release this deploy brings answers for its own migrations and runs them
    release = server_release_venv(wheelhouse["key"])
    state_command = manage_command(
        f"installer_state --workspace {owner['workspace']}", audit_admin=True, venv=release
    )
    prefetch(InstallerState, state_command)  # a Django start: read beside the other facts
    server.group(name="Group cmdop", group="cmdop", system=True, _sudo=True)
    server.user(  # noqa: S604 - `shell` is the login shell, not a subprocess flag
        name="User cmdop (runs gunicorn)",
        user="cmdop",
        group="cmdop",
        system=True,
        shell="/usr/sbin/nologin",
        home="/var/lib/cmdop",
        create_home=False,
        _sudo=True,
    )
    server_release(
        name="cmdop-server release installed beside the one serving",
        root=SERVER_ROOT,
        wheelhouse=wheelhouse,
        temp_dir=temp_dir(),
        _sudo=True,
    )
    config = put_files("/etc/cmdop", {"/etc/cmdop": ("root", "cmdop", "750")})
    # group cmdop may list it (nginx's user is in that group): each file is 0400, the service's
    creds = put_files(
        "/etc/cmdop/credentials", {"/etc/cmdop/credentials": ("root", "cmdop", "750")}
    )
    tls = put_files("/etc/cmdop/tls", {"/etc/cmdop/tls": ("root", "cmdop", "750")})
    admin = put_files(ADMIN, {ADMIN: ("root", "cmdop", "750")}) + put_files(
        f"{ADMIN}/credentials", {f"{ADMIN}/credentials": ("root", "root", "700")}
    )
    units = put_files("/etc/systemd/system", names=UNITS)
    systemd.daemon_reload(
        name="Reload systemd (control-plane units)", _if=any_changed(units), _sudo=True
    )
    audit = cp["audit"]
    grants = manage_command(
        f"audit_grants {audit['app_role']} --retention-days {audit['retention_days']}",
        audit_admin=True,
        venv=release,
    )
    database = control_plane_database(
        name="Databases migrated, the first Owner and workspace created (once)",
        state_command=state_command,
        # as the owners' admin logins: the app's own logins may not change the schema; the
        # audit log lives in its own database, owned by a role the app is not: the app may
        # only add and read rows (audit_grants, after every audit migration)
        migrate=manage_command("migrate_release", audit_admin=True, venv=release)
        + f" && {grants}",
        bootstrap=manage_command(
            f"bootstrap_owner --email {owner['email']} --workspace {owner['workspace']}",
            venv=release,
        ),
        secret_src=str(payload() / owner["password_src"]),
        temp_dir=temp_dir(),
        _sudo=True,
    )
    server.shell(
        name="Audit log append-only for the app, retention as configured",
        commands=[grants],
        _if=lambda: any_changed(config + admin)() and not any_changed([database])(),
        _sudo=True,
    )
    switch = server_switch(
        name="Switch to the release and hand it to gunicorn (HUP, old workers finish)",
        root=SERVER_ROOT,
        key=wheelhouse["key"],
        service="cmdop-server.service",
        socket=SOCKET,
        gunicorn=_gunicorn_version(wheelhouse["files"]),
        restart=any_changed(units),
        replaces=["/opt/cmdop/venv", "/opt/cmdop/wheels"],
        _sudo=True,
    )
    # a switch has already restarted or reloaded it, which reads every file below anew
    server_restart(
        name="Restart the control plane (new units), its socket open meanwhile",
        service="cmdop-server.service",
        socket=SOCKET,
        _if=lambda: not any_changed([switch])() and any_changed([*units, database])(),
        _sudo=True,
    )
    for unit, what in ((SOCKET, "socket"), ("cmdop-server.service", "service")):
        systemd.service(
            name=f"Control plane {what} enabled and running",
            service=unit,
            running=True,
            enabled=True,
            _sudo=True,
        )
    systemd.service(
        name="Reload the control plane (new settings or secrets)",
        service="cmdop-server.service",
        reloaded=True,
        _if=lambda: (
            not any_changed([switch, *units, database])() and any_changed(config + creds + tls)()
        ),
        _sudo=True,
    )
    for timer, what in TIMERS.items():
        systemd.service(name=what, service=timer, running=True, enabled=True, _sudo=True)


def _gunicorn_version(wheels: list[str]) -> str:
    """gunicorn's version in a wheelhouse (its wheel is named gunicorn-<version>-…), "" if
    it has none."""
    return next((name.split("-")[1] for name in wheels if name.startswith("gunicorn-")), "")
