"""`cmdop-install uninstall SITE [--keep-data]`: remove what `deploy` installed.

Every host must answer (the same preflight as deploy) before anything is removed. The
site folder on this machine (secrets, PKI) is not touched: it is how the site is deployed
again.
"""

from __future__ import annotations

from pathlib import Path

import click

from cmdop_install import render
from cmdop_install.deploy import preflight
from cmdop_install.errors import UserError
from cmdop_install.runner import RunResult, run_deploy, with_host_data

UNINSTALL_DEPLOY = "cmdop_install.deploys.uninstall:uninstall"


def uninstall_site(site_dir: Path, *, keep_data: bool, limit: list[str] | None = None) -> RunResult:
    site, inventory, secrets, pem = render.load_for_render(Path(site_dir))
    preflight(inventory, limit)
    per_host = {
        host.name: {
            "cmdop_files": [
                f.path for f in render.render_host(site, inventory, host.name, secrets, pem)
            ],
            "cmdop_keep_data": keep_data,
            "cmdop_agent_user": site["agent"]["user"],
            "cmdop_pg_major": str(site["postgres"]["major"]),
        }
        for host in inventory.hosts()
    }
    groups = with_host_data(inventory.pyinfra_groups(), per_host)
    return run_deploy(groups, UNINSTALL_DEPLOY, limit=limit)


@click.command("uninstall")
@click.argument("site_dir", type=click.Path(file_okay=False, path_type=Path), metavar="SITE_DIR")
@click.option(
    "--keep-data",
    is_flag=True,
    help="Keep the databases, Redis data, agent credentials and homes (deploy brings it back).",
)
@click.option(
    "--limit",
    "limit",
    multiple=True,
    metavar="GROUP|HOST",
    help="Only these groups or hosts (repeatable).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall_command(site_dir: Path, keep_data: bool, limit: tuple[str, ...], yes: bool) -> None:
    """Remove what deploy installed on the hosts of SITE_DIR: services, code, our files, users
    and the Debian packages it installed; with --keep-data the data stays.

    The site folder itself (secrets, certificates) stays on this machine.
    """
    if not (site_dir / "site.toml").is_file():
        raise UserError(f"{site_dir}/site.toml: no such file (is {site_dir} a site folder?)")
    if not yes:
        what = "keeping the data" if keep_data else "INCLUDING ALL DATA (databases, audit log)"
        click.confirm(f"Uninstall CMDOP from the hosts of {site_dir}, {what}?", abort=True)
    result = uninstall_site(site_dir, keep_data=keep_data, limit=list(limit) or None)
    for line in result.host_lines():
        click.echo(line)
    if result.failed:
        raise UserError(f"uninstall failed on {', '.join(result.failed)}; fix and rerun")
    kept = " (data kept: `cmdop-install deploy` brings the site back)" if keep_data else ""
    click.echo(f"uninstalled from {len(result.hosts)} host(s){kept}")
