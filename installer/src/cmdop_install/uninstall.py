"""`cmdop-install uninstall SITE [--keep-data]`: remove what `deploy` installed.

Every host must answer (the same preflight as deploy) before anything is removed. The
site folder on this machine (secrets, PKI) is not touched: it is how the site is deployed
again.
"""

from __future__ import annotations

from cmdop_install.deploy import preflight
from cmdop_install.runner import RunResult, run_deploy, with_host_data
from cmdop_install.sitedir import SiteDir

UNINSTALL_DEPLOY = "cmdop_install.deploys.uninstall:uninstall"


def uninstall_site(site: SiteDir, *, keep_data: bool, limit: list[str] | None = None) -> RunResult:
    preflight(site.inventory, limit)
    per_host = {
        host.name: {
            "cmdop_files": [f.path for f in site.files(host.name)],
            "cmdop_keep_data": keep_data,
            "cmdop_agent_user": site.config["agent"]["user"],
            "cmdop_pg_major": str(site.config["postgres"]["major"]),
        }
        for host in site.inventory.hosts()
    }
    groups = with_host_data(site.inventory.pyinfra_groups(), per_host)
    return run_deploy(groups, UNINSTALL_DEPLOY, limit=limit)
