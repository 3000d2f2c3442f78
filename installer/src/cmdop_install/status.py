"""`cmdop-install status SITE`: per host and component, what runs, which version, when its
certificate expires (with a warning 30 days ahead), whether each agent is online, and when
this site was last deployed.

Everything is read (pyinfra facts over SSH, the control plane's own view of its fleet); nothing
on the hosts changes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cmdop_install import agent_releases, manage, pki, rotation_state
from cmdop_install.errors import UserError
from cmdop_install.runner import read_facts
from cmdop_install.sitedir import SiteDir

DEPLOY_LOG = "deploys.json"

# component -> (systemd unit, shell command printing its version)
COMPONENTS = {
    "postgres": ("postgresql@{major}-main", "dpkg-query -W -f='${{Version}}' postgresql-{major}"),
    "redis": ("redis-server", "dpkg-query -W -f='${{Version}}' redis-server"),
    "control_plane": (
        "cmdop-server",
        "/opt/cmdop/venv/bin/pip show cmdop-server 2>/dev/null | sed -n 's/^Version: //p'",
    ),
    "nginx": ("nginx", "dpkg-query -W -f='${{Version}}' nginx"),
    "agents": ("cmdop-agent", agent_releases.CURRENT_RELEASE_COMMAND),
}


def restart_pending_command(venv: str = manage.SERVER_VENV) -> str:
    """Prints yes when cmdop-server was installed after the running service started: the
    version installed is then not the one serving (a deploy stopped before the restart, e.g.
    by a failed migration, leaves the previous release's code in the workers)."""
    return (
        "s=$(systemctl show -p ExecMainStartTimestamp --value cmdop-server 2>/dev/null); "
        f"d=$(ls -d {venv}/lib/python3*/site-packages/cmdop_server-*.dist-info 2>/dev/null "
        "| head -n 1); "
        'if [ -n "$s" ] && [ -n "$d" ] && '
        '[ "$(stat -c %Y "$d")" -gt "$(date -d "$s" +%s)" ]; then echo yes; else echo no; fi'
    )


def site_status(site: SiteDir) -> dict:
    inventory = site.inventory
    major = site.config["postgres"]["major"]
    facts: dict[str, str] = {"hostname": manage.HOSTNAME_COMMAND}
    for component, (unit, version) in COMPONENTS.items():
        unit, version = unit.format(major=major), version.format(major=major)
        facts[f"{component}.state"] = f"systemctl is-active {unit} 2>/dev/null || true"
        facts[f"{component}.version"] = version
    facts["control_plane.restart_pending"] = restart_pending_command()
    result = read_facts(inventory.pyinfra_groups(), facts)
    fleet: dict[str, dict] = {}
    if inventory.groups["control_plane"]:
        try:
            fleet = read_fleet(site)
        except UserError:
            pass  # the control plane is down: its host's rows say so, agents show offline
    expiry = pki.expiry_dates(site.path)
    hosts = []
    for host in inventory.hosts():
        roles = inventory.roles_of(host.name)
        shown = [*roles, *(["nginx"] if "control_plane" in roles else [])]
        entry: dict[str, Any] = {"host": host.name, "address": host.address, "components": []}
        res = result.hosts.get(host.name)
        if res is None or res.error:
            entry["error"] = res.error if res else "not reached"
        for component in shown:
            if component not in COMPONENTS:
                continue
            row: dict[str, Any] = {
                "component": component,
                "state": res.facts.get(f"{component}.state", "?") if res else "?",
                "version": res.facts.get(f"{component}.version", "") if res else "",
            }
            if component == "control_plane":
                row["restart_pending"] = bool(
                    res and res.facts.get("control_plane.restart_pending", "").strip() == "yes")
            if component == "agents":
                machine = manage.machine_of(fleet, res.facts.get("hostname", "")) if res else {}
                row["online"] = bool(machine.get("online"))
                row["last_seen"] = machine.get("last_seen")
            entry["components"].append(row)
        entry["certificates"] = {k: v for k, v in expiry.items() if k.endswith(f"-{host.name}")}
        hosts.append(entry)
    record = rotation_state.load(site.path)["rotation"]
    rotation = record and {k: record[k] for k in ("names", "phase", "done", "direction",
                                                    "started", "updated")}
    secrets = [{"name": r["name"], "age": r["age"]} for r in site.store.listing()]
    return {"site": site.name, "last_deploy": last_deploy(site.path), "hosts": hosts,
            "rotation": rotation, "secrets": secrets,
            "warnings": pki.expiry_warnings(site.path, site.config)}


def read_fleet(site: SiteDir) -> dict[str, dict]:
    """The control plane's view of its agents (``manage.parse_fleet``), read with
    ``fleet_status`` on the first control-plane host; find a host in it with
    ``manage.machine_of``."""
    first = site.inventory.groups["control_plane"][0].name
    command = manage.fleet_status_command(site.name)
    cp = read_facts(site.inventory.pyinfra_groups(), {"fleet": command}, limit=[first])
    if cp.hosts[first].error:
        raise UserError(f"{first}: cannot read the fleet: {cp.hosts[first].error}")
    return manage.parse_fleet(cp.hosts[first].facts.get("fleet", ""))


def record_deploy(site_dir: Path, changes: int, failed: list[str]) -> None:
    """Append this deploy to the site's local log (the hosts are not touched for it)."""
    log = Path(site_dir) / DEPLOY_LOG
    entries = json.loads(log.read_text()) if log.exists() else []
    entries = [
        *entries[-49:],
        {
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "changes": changes,
            "failed": failed,
        },
    ]
    log.write_text(json.dumps(entries, indent=1) + "\n")


def last_deploy(site_dir: Path) -> dict | None:
    log = Path(site_dir) / DEPLOY_LOG
    if not log.exists():
        return None
    try:
        return json.loads(log.read_text())[-1]
    except (ValueError, IndexError):
        raise UserError(
            f"{log}: not a deploy log (delete it; the next deploy starts a new one)"
        ) from None
