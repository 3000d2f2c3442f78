"""`cmdop-install backup`'s part on the database host: cmdop-backup dumps both databases
into a private folder of the SSH user's, this machine fetches the files, the folder goes.

The download runs as the SSH user, never through sudo: pyinfra's sudo download copies the
file to a world-readable temporary file first.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Home
from pyinfra.operations import files, server

from cmdop_install.deploys.postgres import BACKUP_ETC

FETCHED = ("app.dump", "audit.dump", "SHA256SUMS")


@deploy("Backup")
def dump() -> None:
    home = host.get_fact(Home, _sudo=False)
    remote = f"{home}/.cmdop-backup-{host.data.cmdop_backup_run}"
    local = Path(host.data.cmdop_backup_fetch)
    server.shell(name="Private folder for this backup", commands=[f"mkdir -m 700 {remote}"],
                 _sudo=False)
    server.shell(
        name="Dump the app and audit databases (cmdop-backup)",
        commands=[f"bash {BACKUP_ETC}/cmdop-backup {remote}/db && chown -R --reference={remote} "
                  f"{remote}/db || {{ rm -rf {remote}; exit 1; }}"],
        _sudo=True,
    )
    for name in FETCHED:
        files.get(name=f"Fetch {name}", src=f"{remote}/db/{name}", dest=str(local / name),
                  add_deploy_dir=False, _sudo=False)
    server.shell(name="Remove the host's copy", commands=[f"rm -rf {remote}"], _sudo=False)
