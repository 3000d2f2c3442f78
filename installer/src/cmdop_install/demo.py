"""The README's main command: a local fleet, proven over SSH with pyinfra.

Today it brings up a lab and runs a small deploy (a Debian package and a systemd unit) on
every host twice — the second run must change nothing — then shows each host's `uname -a`.
Later it grows into the whole-site demo (control plane, agents, sessions).
"""

import time

import click

from cmdop_install.errors import UserError
from cmdop_install.lab import core
from cmdop_install.runner import load_inventory_groups, run_deploy

PROBE = "cmdop_install.deploys.lab_probe:probe"


def run(name: str = "demo", hosts: int = 3) -> None:
    started = time.monotonic()
    state = core.up(name, hosts, ())
    inventory = state.dir / "inventory.py"
    for attempt in ("first run", "second run (must change nothing)"):
        groups = load_inventory_groups(inventory)
        result = run_deploy(groups, PROBE, limit=["lab"], facts={"uname": "uname -a"})
        if result.failed:
            raise UserError(f"demo: the probe deploy failed on {', '.join(result.failed)}")
        click.echo(f"pyinfra {attempt}: {result.changes} change(s) on {len(result.hosts)} host(s)")
    if result.changes:
        raise UserError(
            f"demo: the second run changed {result.changes} thing(s); deploys must be idempotent"
        )
    for h in result.hosts.values():
        click.echo(f"  {h.name}: {h.facts['uname']}")
    click.echo(
        f"\ndemo ready in {time.monotonic() - started:.0f}s.\n"
        f"  inventory:  {inventory}\n"
        f"  a shell:    cmdop-install lab ssh --name {name} host1\n"
        f"  tear down:  cmdop-install lab down --name {name}"
    )


@click.command("demo")
@click.option("--name", default="demo", show_default=True, help="Name of the demo lab.")
@click.option("--hosts", default=3, show_default=True, help="Number of lab hosts.")
def demo_command(name: str, hosts: int) -> None:
    """Bring up a local lab and prove it with a pyinfra deploy over SSH."""
    run(name, hosts)
