"""`cmdop-install lab …`: a local, disposable fleet to try a site on before bare metal."""

import json
import os

import click

from cmdop_install.lab import core

name_option = click.option(
    "--name",
    "name",
    default="cmdop",
    show_default=True,
    help="Name of the lab (several can coexist).",
)


@click.group()
def lab() -> None:
    """A local fleet of Debian 12 hosts (podman, systemd, sshd) reached over SSH."""


@lab.command()
@click.option(
    "--hosts", "hosts", type=int, default=3, show_default=True, help="Normal hosts (1-50)."
)
@click.option(
    "--airgapped",
    "airgapped",
    multiple=True,
    metavar="NAME",
    help="An extra host with no route out and no DNS (repeatable).",
)
@name_option
def up(hosts: int, airgapped: tuple[str, ...], name: str) -> None:
    """Build the image once, start the hosts, write inventory.py and ssh_config."""
    state = core.up(name, hosts, airgapped)
    click.echo(f"inventory:  {state.dir / 'inventory.py'}")
    click.echo(f"ssh config: {state.dir / 'ssh_config'}")
    for h in state.hosts:
        click.echo(f"  {h.name:<10} {h.ip:<15} {'air-gapped' if h.airgapped else ''}".rstrip())


@lab.command()
@name_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str, as_json: bool) -> None:
    """Hosts, addresses and state."""
    info = core.status(name)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"lab {info['name']}  (inventory: {info['inventory']})")
    for h in info["hosts"]:
        kind = "air-gapped" if h["airgapped"] else ""
        click.echo(f"  {h['name']:<10} {h['ip']:<15} {h['state']:<10} {kind}".rstrip())


@lab.command(context_settings={"ignore_unknown_options": True})
@name_option
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(name: str, host: str, command: tuple[str, ...]) -> None:
    """Open a shell on HOST (or run COMMAND there) as the deploy user."""
    state = core.require_state(name)
    argv = core.ssh_argv(state, host, *command)
    os.execvp(argv[0], argv)  # noqa: S606 - hand the terminal to ssh, argv is a list


@lab.command()
@name_option
@click.option("--purge", is_flag=True, help="Also remove the cached image.")
def down(name: str, purge: bool) -> None:
    """Remove every host, network, rule and route the lab made (keeps the image)."""
    removed = core.down(name, purge)
    click.echo(
        f"lab {name}: removed " + (", ".join(removed) if removed else "nothing (no such lab)")
    )
