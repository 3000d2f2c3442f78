"""A small deploy that proves a host is usable: apt works, a systemd unit can be enabled.

Used by the demo and the lab tests; a second run must report no change.
"""

import re
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

PROBE_UNIT = """\
# managed by cmdop-install (lab probe), do not edit
[Unit]
Description=cmdop lab probe: proves packages and units deploy over SSH

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/tree --version

[Install]
WantedBy=multi-user.target
"""


@deploy("Lab probe")
def probe() -> None:
    apt.packages(
        name="Install a small Debian package",
        packages=["tree"],
        update=True,
        cache_time=86400,
        no_recommends=True,
        _sudo=True,
    )
    unit = files.put(
        name="Install the probe unit",
        src=StringIO(PROBE_UNIT),
        dest="/etc/systemd/system/cmdop-lab-probe.service",
        mode="644",
        user="root",
        group="root",
        _sudo=True,
    )
    systemd.daemon_reload(name="Reload systemd", _if=unit.did_change, _sudo=True)
    systemd.service(
        name="Enable and start the probe unit",
        service="cmdop-lab-probe.service",
        running=True,
        enabled=True,
        _sudo=True,
    )


@deploy("Lab name resolution")
def lab_dns() -> None:
    """Lab hosts have no DNS for the site's domain: map it to the control-plane host.

    Host data ``cmdop_lab_dns`` is ``{"name": ..., "address": ...}`` (set by the caller).
    """
    entry = host.data.cmdop_lab_dns
    files.line(
        name=f"{entry['name']} in /etc/hosts",
        path="/etc/hosts",
        line=rf"^\S+\s+{re.escape(entry['name'])}$",
        replace=f"{entry['address']} {entry['name']}",
        _sudo=True,
    )
