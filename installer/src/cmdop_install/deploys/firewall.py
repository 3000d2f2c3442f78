"""Host firewall for the data services: Postgres and Redis answer only the control plane.

Our own nftables table (``inet cmdop``), loaded by ``cmdop-firewall.service`` before the
databases start. It drops other sources on our ports only; the rest of the host's
filtering stays the operator's.
"""

from pyinfra.api import deploy
from pyinfra.operations import systemd

from cmdop_install.deploys.common import any_changed, put_files

UNIT = "cmdop-firewall.service"


@deploy("Firewall")
def firewall() -> None:
    rules = put_files("/etc/cmdop-firewall", {"/etc/cmdop-firewall": ("root", "root", "700")})
    unit = put_files("/etc/systemd/system", names=(UNIT,))
    systemd.daemon_reload(name="Reload systemd (firewall unit)", _if=any_changed(unit), _sudo=True)
    started = systemd.service(
        name="Firewall rules loaded at boot and now",
        service=UNIT,
        running=True,
        enabled=True,
        _sudo=True,
    )
    systemd.service(
        name="Reload the firewall rules",
        service=UNIT,
        reloaded=True,
        _if=lambda: any_changed(rules + unit)() and not any_changed([started])(),
        _sudo=True,
    )
