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
        f"{manage.SERVER_VENV}/bin/pip show cmdop-server 2>/dev/null "
        "| sed -n 's/^Version: //p'",
    ),
    "nginx": ("nginx", "dpkg-query -W -f='${{Version}}' nginx"),
    "agents": ("cmdop-agent", agent_releases.CURRENT_RELEASE_COMMAND),
}

# what restart_pending means since releases are switched by a link: some gunicorn worker runs
# from another release directory than `current`
RESTART_PENDING = ("a release other than current is serving (a deploy stopped before its "
                   "switch, or old workers are still finishing)")


def restart_pending_command(venv: str = manage.SERVER_VENV) -> str:
    """Prints yes when a worker of cmdop-server runs another release than ``venv`` (the
    `current` link) resolves to: a deploy stopped before its switch reached gunicorn, or old
    workers still finishing their requests after one. Each worker's working directory is the
    release it imported (gunicorn.conf.py's ``chdir``)."""
    return (
        "m=$(systemctl show -p MainPID --value cmdop-server 2>/dev/null); "
        f"c=$(readlink -f {venv}); p=no; "
        'if [ -n "$c" ] && [ "${m:-0}" != 0 ]; then for w in $(pgrep -P "$m"); do '
        '[ "$(readlink -f /proc/$w/cwd)" = "$c" ] || p=yes; done; fi; echo $p'
    )


def shown_components(roles: list[str]) -> list[str]:
    """The components status reports on a host with these inventory groups."""
    shown = [*roles, *(["nginx"] if "control_plane" in roles else [])]
    return [c for c in shown if c in COMPONENTS]


def host_facts(components: list[str], major: int) -> dict[str, str]:
    """The facts status reads on a host running ``components``, and no others: a command
    about a package the host does not have fails there (pyinfra logs every such failure)."""
    facts: dict[str, str] = {"hostname": manage.HOSTNAME_COMMAND}
    for component in components:
        unit, version = (c.format(major=major) for c in COMPONENTS[component])
        facts[f"{component}.state"] = f"systemctl is-active {unit} 2>/dev/null || true"
        facts[f"{component}.version"] = version
    if "control_plane" in components:
        facts["control_plane.restart_pending"] = restart_pending_command()
    return facts


def site_status(site: SiteDir) -> dict:
    inventory = site.inventory
    major = site.config["postgres"]["major"]
    shown = {h.name: shown_components(inventory.roles_of(h.name)) for h in inventory.hosts()}
    result = read_facts(inventory.pyinfra_groups(), {},
                        host_facts={n: host_facts(c, major) for n, c in shown.items()})
    fleet: dict[str, dict] = {}
    if inventory.groups["control_plane"]:
        try:
            fleet = read_fleet(site)
        except UserError:
            pass  # the control plane is down: its host's rows say so, agents show offline
    expiry = pki.expiry_dates(site.path)
    hosts = []
    for host in inventory.hosts():
        entry: dict[str, Any] = {"host": host.name, "address": host.address, "components": []}
        res = result.hosts.get(host.name)
        if res is None or res.error:
            # nothing was read there: one row saying why, not a row of unknowns per component
            entry["error"] = res.error if res else "not reached"
        else:
            entry["components"] = [_component_row(c, res.facts, fleet) for c in shown[host.name]]
        entry["certificates"] = {k: v for k, v in expiry.items() if k.endswith(f"-{host.name}")}
        hosts.append(entry)
    record = rotation_state.load(site.path)["rotation"]
    rotation = record and {k: record[k] for k in ("names", "phase", "done", "direction",
                                                    "started", "updated")}
    secrets = [{"name": r["name"], "age": r["age"]} for r in site.store.listing()]
    return {"site": site.name, "last_deploy": last_deploy(site.path), "hosts": hosts,
            "rotation": rotation, "secrets": secrets, "ca": pki.ca_dates(site.path),
            "warnings": pki.expiry_warnings(site.path, site.config)}


CREDENTIAL_LAPSED = ("credential LAPSED: did not take its new credential in a rotation; refused "
                     "until an Admin issues one")


def problem_lines(info: dict) -> list[str]:
    """What in ``site_status``'s ``info`` needs the operator (``status --quiet``): hosts not
    reached, components not active, agents offline or refused (a lapsed credential), a
    control plane serving an older release, certificate warnings."""
    lines = []
    for h in info["hosts"]:
        if "error" in h:
            lines.append(f"{h['host']} ({h['address']})  unreachable: {h['error']}")
            continue
        for c in h["components"]:
            if c["state"] != "active":
                lines.append(f"{h['host']}: {c['component']} {c['state']}")
            if c.get("online") is False:
                lines.append(f"{h['host']}: agent OFFLINE (last seen {c['last_seen'] or 'never'})")
            if c.get("credential") == "lapsed":
                lines.append(f"{h['host']}: agent {CREDENTIAL_LAPSED}")
            if c.get("restart_pending"):
                lines.append(f"{h['host']}: control_plane {RESTART_PENDING}")
    return lines + list(info["warnings"])


def _component_row(component: str, facts: dict[str, str], fleet: dict[str, dict]) -> dict:
    row: dict[str, Any] = {
        "component": component,
        "state": facts.get(f"{component}.state", "?"),
        "version": facts.get(f"{component}.version", ""),
    }
    if component == "control_plane":
        row["restart_pending"] = facts.get("control_plane.restart_pending", "").strip() == "yes"
    if component == "agents":
        machine = manage.machine_of(fleet, facts.get("hostname", ""))
        row["online"] = bool(machine.get("online"))
        row["last_seen"] = machine.get("last_seen")
        # current, handover_open/_issued (a rotation), lapsed, oauth; None: not enrolled
        row["credential"] = machine.get("credential")
    return row


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
