"""`cmdop-install restore`'s run: the control plane stops, Redis starts empty, the
database host replaces both databases from the dumps (``cmdop-restore``), the audit grants
are applied again and the control plane starts. pyinfra runs each operation on every host
before the next, so the databases are replaced only once every control-plane host has
stopped.

The dumps go up as the SSH user into a 0700 folder of its own, removed whatever the outcome.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Home
from pyinfra.operations import files, server, systemd

from cmdop_install.deploys.control_plane import SOCKET, TIMERS
from cmdop_install.deploys.postgres import BACKUP_ETC

SENT = ("app.dump", "audit.dump", "SHA256SUMS")
REDIS_DATA = "/var/lib/redis"
# the socket first: while it listens, a request would start the service again
SERVICES = (SOCKET, "cmdop-server.service", *TIMERS)


@deploy("Restore")
def restore() -> None:
    control_plane = "control_plane" in host.groups
    if control_plane:
        for unit in SERVICES:
            systemd.service(name=f"Stop {unit} for the restore", service=unit, running=False,
                            _sudo=True)
    if "redis" in host.groups:
        # what Redis holds belongs to the databases being replaced: a session or machine
        # id the restored sequences hand out again must not meet another's output or work
        systemd.service(name="Stop Redis", service="redis-server", running=False, _sudo=True)
        server.shell(name="Empty Redis (transient state only)",
                     commands=[f"rm -rf {REDIS_DATA}/dump.rdb {REDIS_DATA}/appendonlydir"],
                     _sudo=True)
        systemd.service(name="Start Redis", service="redis-server", running=True, _sudo=True)
    if host.name == host.data.cmdop_restore_db_host:
        home = host.get_fact(Home, _sudo=False)
        remote = f"{home}/.cmdop-restore-{host.data.cmdop_restore_run}"
        local = Path(host.data.cmdop_restore_dumps)
        server.shell(name="Private folder for the dumps", commands=[f"mkdir -m 700 {remote}"],
                     _sudo=False)
        for name in SENT:
            files.put(name=f"Send {name}", src=str(local / name), dest=f"{remote}/{name}",
                      mode="600", _sudo=False)
        server.shell(
            name="Replace the app and audit databases (cmdop-restore)",
            commands=[f"bash {BACKUP_ETC}/cmdop-restore {remote}; status=$?; "
                      f"rm -rf {remote}; exit $status"],
            _sudo=True,
        )
    if control_plane:
        server.shell(name="Audit log append-only for the app",
                     commands=[host.data.cmdop_restore_grants], _sudo=True)
        for unit in SERVICES:
            systemd.service(name=f"Start {unit}", service=unit, running=True, _sudo=True)
