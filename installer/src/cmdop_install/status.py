"""`cmdop-install status SITE`: per host and component, what runs, which version, when its
certificate expires, whether each agent is online, and when this site was last deployed.

Everything is read (pyinfra facts over SSH, the control plane's own view of its fleet); nothing
on the hosts changes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cmdop_install import pki
from cmdop_install.deploys.control_plane import manage_command
from cmdop_install.errors import UserError
from cmdop_install.inventory import load_inventory
from cmdop_install.runner import read_facts
from cmdop_install.site import load_site

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
    "agents": (
        "cmdop-agent",
        'basename "$(readlink /opt/cmdop-agent/current)" 2>/dev/null',
    ),
}


def site_status(site_dir: Path) -> dict:
    site, inventory = load_site(site_dir), load_inventory(site_dir)
    major = site["postgres"]["major"]
    groups = inventory.pyinfra_groups()
    facts: dict[str, str] = {}
    for component, (unit, version) in COMPONENTS.items():
        unit, version = unit.format(major=major), version.format(major=major)
        facts[f"{component}.state"] = f"systemctl is-active {unit} 2>/dev/null || true"
        facts[f"{component}.version"] = version
    result = read_facts(groups, facts)
    fleet: dict[str, dict] = {}
    if inventory.groups["control_plane"]:
        try:
            fleet = read_fleet(site, inventory)
        except UserError:
            pass  # the control plane is down: its host's rows say so, agents show offline
    expiry = pki.expiry_dates(site_dir)
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
            if component == "agents":
                machine = fleet.get(host.name)
                row["online"] = bool(machine and machine["online"])
                row["last_seen"] = machine["last_seen"] if machine else None
            entry["components"].append(row)
        entry["certificates"] = {k: v for k, v in expiry.items() if k.endswith(f"-{host.name}")}
        hosts.append(entry)
    return {"site": site["site"]["name"], "last_deploy": last_deploy(site_dir), "hosts": hosts}


def read_fleet(site, inventory) -> dict[str, dict]:
    """The control plane's view of its agents, by host name: online, last_seen,
    agent_version, boot_id (``fleet_status`` on the first control-plane host)."""
    first = inventory.groups["control_plane"][0].name
    command = manage_command(f"fleet_status --workspace {site['site']['name']}")
    cp = read_facts(inventory.pyinfra_groups(), {"fleet": command}, limit=[first])
    if cp.hosts[first].error:
        raise UserError(f"{first}: cannot read the fleet: {cp.hosts[first].error}")
    fleet = {}
    for line in cp.hosts[first].facts.get("fleet", "").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # not ours (e.g. a warning line)
        fleet[row["hostname"]] = row
    return fleet


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


@click.command("status")
@click.argument("site_dir", type=click.Path(file_okay=False, path_type=Path), metavar="SITE_DIR")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(site_dir: Path, as_json: bool) -> None:
    """Per host and component: service state, version, certificates, agents online, last deploy."""
    info = site_status(site_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    last = info["last_deploy"]
    click.echo(
        f"site {info['site']}; last deploy: "
        + (f"{last['at']} ({last['changes']} change(s))" if last else "never")
    )
    for h in info["hosts"]:
        click.echo(
            f"{h['host']} ({h['address']})" + (f"  ERROR: {h['error']}" if "error" in h else "")
        )
        for c in h["components"]:
            extra = ""
            if "online" in c:
                extra = "  online" if c["online"] else "  OFFLINE"
            click.echo(f"  {c['component']:<14} {c['state']:<10} {c['version']:<22}{extra}")
        for name, when in sorted(h["certificates"].items()):
            click.echo(f"  cert {name:<28} expires {when}")
