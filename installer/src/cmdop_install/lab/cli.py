"""`cmdop-install lab …`: a local, disposable fleet to try a site on before bare metal."""

import json
import os

import click

from cmdop_install.errors import UserError
from cmdop_install.lab import core, paths

DEFAULT_NAME = "cmdop"

name_option = click.option(
    "--name",
    "name",
    default=DEFAULT_NAME,
    show_default=True,
    help="Name of the lab (several can coexist).",
)
existing_name_option = click.option(
    "--name",
    "name",
    default=None,
    help="Which lab (default: the only one there is).",
)


def _existing_lab(name: str | None) -> str | None:
    """The lab a command means: the one named, else the only one (None when there is none).

    With several labs and no --name, guessing could act on the wrong one: list them instead.
    """
    if name is not None:
        return name
    labs = sorted(f.parent.name for f in paths.home().glob("*/state.json"))
    if len(labs) > 1:
        raise UserError(f"{len(labs)} labs exist ({', '.join(labs)}): choose one with --name")
    return labs[0] if labs else None


def _required_lab(name: str | None) -> str:
    found = _existing_lab(name)
    if found is None:
        raise UserError("there is no lab (start one with `cmdop-install lab up`)")
    return found


@click.group()
def lab() -> None:
    """A local fleet of Debian 12 hosts (podman, systemd, sshd) reached over SSH.

    `status`, `ssh` and `down` act on the only lab there is unless --name picks one.

    \b
    Example:
      cmdop-install lab up --hosts 3 && cmdop-install lab ssh host1
    """


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
    """Build the image once, start the hosts, write inventory.py and ssh_config.

    \b
    Example:
      cmdop-install lab up --hosts 3 --airgapped air1
    """
    state = core.up(name, hosts, airgapped)
    click.echo(f"inventory:  {state.dir / 'inventory.py'}")
    click.echo(f"ssh config: {state.dir / 'ssh_config'}")
    for h in state.hosts:
        click.echo(f"  {h.name:<10} {h.ip:<15} {'air-gapped' if h.airgapped else ''}".rstrip())


@lab.command()
@existing_name_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str | None, as_json: bool) -> None:
    """Hosts, addresses and state.

    \b
    Example:
      cmdop-install lab status --name demo --json
    """
    info = core.status(_required_lab(name))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"lab {info['name']}  (inventory: {info['inventory']})")
    for h in info["hosts"]:
        kind = "air-gapped" if h["airgapped"] else ""
        click.echo(f"  {h['name']:<10} {h['ip']:<15} {h['state']:<10} {kind}".rstrip())


@lab.command(context_settings={"ignore_unknown_options": True})
@existing_name_option
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(name: str | None, host: str, command: tuple[str, ...]) -> None:
    """Open a shell on HOST (or run COMMAND there) as the deploy user.

    \b
    Example:
      cmdop-install lab ssh host2 -- systemctl status cmdop-agent
    """
    state = core.require_state(_required_lab(name))
    argv = core.ssh_argv(state, host, *command)
    os.execvp(argv[0], argv)  # noqa: S606 - hand the terminal to ssh, argv is a list


@lab.command()
@existing_name_option
@click.option("--purge", is_flag=True, help="Also remove the cached image.")
def down(name: str | None, purge: bool) -> None:
    """Remove every host, network, rule and route the lab made (keeps the image).

    \b
    Example:
      cmdop-install lab down --name demo
    """
    lab_name = _existing_lab(name)
    # With no lab left, down still clears a stray route and, with --purge, the image.
    removed = core.down(lab_name or DEFAULT_NAME, purge)
    if lab_name is None:
        click.echo("no lab to remove" + (f"; removed {', '.join(removed)}" if removed else ""))
        return
    click.echo(
        f"lab {lab_name}: removed " + (", ".join(removed) if removed else "nothing (no such lab)")
    )
