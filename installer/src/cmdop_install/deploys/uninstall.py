"""Remove what the site deploy put on this host: services stopped and disabled, our files,
code, units and users gone, the Debian packages it installed removed.

``host.data.cmdop_keep_data`` keeps the data: the Postgres cluster (``/etc/postgresql``,
``/var/lib/postgresql``: packages are *removed*, not purged, as Debian means it), Redis's
``/var/lib/redis`` and ``/etc/redis``, each agent's credential and its user's home. A later
deploy brings the site back on that data (the agents keep their enrollment).
``host.data.cmdop_files``: the paths the deploy rendered for this host (from the site).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, server, systemd

from cmdop_install.deploys.common import any_changed, temp_dir
from cmdop_install.deploys.ops import absent

# service -> roles that run it, in stop order (agents first: what they talk to is still up)
SERVICES = [
    ("cmdop-agent.service", {"agents"}),
    ("cmdop-audit-retention.timer", {"control_plane"}),
    ("cmdop-audit-retention.service", {"control_plane"}),
    ("cmdop-sessions-sweep.timer", {"control_plane"}),
    ("cmdop-sessions-sweep.service", {"control_plane"}),
    ("cmdop-server.socket", {"control_plane"}),
    ("cmdop-server.service", {"control_plane"}),
    ("nginx.service", {"control_plane"}),
    ("redis-server.service", {"redis"}),
    ("cmdop-backup.timer", {"postgres"}),
    ("cmdop-backup.service", {"postgres"}),
    ("postgresql@{major}-main.service", {"postgres"}),
    ("postgresql.service", {"postgres"}),
    ("cmdop-firewall.service", {"postgres", "redis"}),
]
# role -> paths of ours that are not in the rendered-file list (code, state, runtime)
OURS = {
    "agents": ["/opt/cmdop-agent", "/etc/cmdop-agent"],
    "control_plane": ["/opt/cmdop", "/etc/cmdop", "/run/cmdop", "/etc/nginx/tls"],
    "redis": [
        "/etc/systemd/system/redis-server.service.d",
        "/etc/redis/tls",
        "/etc/cmdop-firewall",
    ],
    "postgres": ["/etc/cmdop-firewall", "/etc/cmdop-backup"],
}
# role -> data, removed only without --keep-data
DATA = {
    "agents": ["/var/lib/cmdop-agent"],
    "control_plane": ["/var/lib/cmdop"],
    "redis": ["/etc/redis", "/var/lib/redis", "/var/log/redis"],
    "postgres": ["/etc/postgresql", "/var/lib/postgresql", "/var/log/postgresql"],
}
# kept with --keep-data whatever the rendered list says (the cluster's and Redis's config)
KEPT_WITH_DATA = ("/etc/postgresql/", "/etc/redis/", "/var/lib/")


def packages(roles: set[str], major: str) -> list[str]:
    wanted = []
    if "postgres" in roles:
        wanted += [f"postgresql-{major}"]
    if "redis" in roles:
        wanted += ["redis-server"]
    if "control_plane" in roles:
        wanted += ["nginx", "nginx-common"]
    return wanted


@deploy("Uninstall CMDOP")
def uninstall() -> None:
    roles = set(host.groups)
    keep = bool(host.data.cmdop_keep_data)
    agent_user = host.data.cmdop_agent_user
    major = host.data.cmdop_pg_major
    for service, runs_on in SERVICES:
        if runs_on & roles:
            service = service.format(major=major)
            systemd.service(
                name=f"Stop and disable {service}",
                service=service,
                running=False,
                enabled=False,
                _sudo=True,
            )
    paths = [p for p in host.data.cmdop_files if not (keep and p.startswith(KEPT_WITH_DATA))]
    for role in sorted(roles & OURS.keys()):
        paths += OURS[role]
        if not keep:
            paths += DATA[role]
    if "agents" in roles and not keep and agent_user == "cmdop-agent":
        paths.append(f"/home/{agent_user}")
    paths.append(temp_dir())
    names = packages(roles, major)
    if names:
        apt.packages(
            name=f"{'Remove' if keep else 'Purge'} {', '.join(names)}",
            packages=names,
            present=False,
            purge=not keep,
            _sudo=True,
        )
    removed = absent(name="Our files, code and state", paths=sorted(set(paths)), _sudo=True)
    systemd.daemon_reload(
        name="Reload systemd (units removed)", _if=any_changed([removed]), _sudo=True
    )
    if "control_plane" in roles:
        server.user(name="No user cmdop", user="cmdop", present=False, _sudo=True)
        server.group(name="No group cmdop", group="cmdop", present=False, _sudo=True)
    if "agents" in roles and not keep and agent_user == "cmdop-agent":
        # an operator-chosen agent user is theirs: it stays
        server.user(name=f"No user {agent_user}", user=agent_user, present=False, _sudo=True)
