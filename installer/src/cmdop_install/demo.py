"""The README's main command: a whole CMDOP site deployed onto local lab hosts.

``cmdop-install demo`` brings up three lab hosts (host1: Postgres, Redis, nginx and the
control plane; host2 and host3: agents), makes a site for them (``sites/demo`` next to the
current directory unless ``--site`` says otherwise), deploys the control-plane host, rolls
the agents out (``agents rollout``: a canary, then the rest, each gated on the control
plane), deploys the whole site again to show that nothing changes, then proves the fleet end
to end through the control plane.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from cmdop_install.deploy import deploy_site
from cmdop_install.deploys.control_plane import manage_command
from cmdop_install.errors import UserError
from cmdop_install.inventory import load_inventory
from cmdop_install.lab import core
from cmdop_install.rollout import Rollout, summary_lines
from cmdop_install.runner import read_facts
from cmdop_install.site import load_site
from cmdop_install.site_api import SiteApi
from cmdop_install.siteinit import init_site


def run(name: str, site_dir: Path) -> None:
    started = time.monotonic()
    state = core.up(name, 3, ())
    fresh = not (site_dir / "site.toml").exists()
    site_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # the lab's addresses are the inventory: rewritten each run, the rest of the site is kept
    (site_dir / "inventory.py").write_text(
        core.site_inventory_text(state, "host1", ["host2", "host3"])
    )
    report = init_site(site_dir)
    step(f"site {site_dir}: {'created' if fresh else 'kept'}; secrets key: {report.key_source}")
    site = load_site(site_dir)
    inventory = load_inventory(site_dir)
    groups = inventory.pyinfra_groups()
    core.map_site_domain(groups, site["site"]["domain"], state.host("host1").ip)

    t = time.monotonic()
    result = deploy_site(site_dir, limit=["control_plane"])
    if result.failed:
        raise UserError(f"demo: the deploy failed on {', '.join(result.failed)}")
    step(
        f"deploy host1 (Postgres, Redis, control plane, nginx): {result.changes} change(s) "
        f"in {time.monotonic() - t:.0f}s"
    )
    t = time.monotonic()
    rollout = Rollout(site_dir, lambda line: step(f"  {line}"), health_timeout=180)
    step("roll the agents out (a canary first, then the rest; each must report in):")
    outcome = rollout.run(None, "100%", 1, "0")
    for line in summary_lines(outcome):
        step(f"  {line}")
    if outcome.stopped or outcome.failed:
        raise UserError(f"demo: the agent rollout failed on {', '.join(outcome.failed)}")
    step(f"agents rolled out in {time.monotonic() - t:.0f}s")
    t = time.monotonic()
    result = deploy_site(site_dir)
    step(
        f"deploy the whole site again (must change nothing): {result.changes} change(s) on "
        f"{len(result.hosts)} host(s) in {time.monotonic() - t:.0f}s"
    )
    if result.failed or result.changes:
        raise UserError(f"demo: the second deploy changed {result.changes} thing(s)")

    prove_fleet(site_dir, site, groups, state, ["host2", "host3"])

    domain = site["site"]["domain"]
    owner = site["site"]["owner_email"] or f"admin@{domain}"
    click.echo(
        f"\nCMDOP is up in {time.monotonic() - started:.0f}s.\n"
        f"  control plane: {site['site']['public_url']}  (host1, {state.host('host1').ip}; "
        f"map {domain} to it in your /etc/hosts to browse)\n"
        f"  site CA:       {site_dir / 'pki' / 'ca.crt'}\n"
        f"  owner:         {owner}; password: "
        f"cmdop-install secrets show {site_dir} owner_password\n"
        f"  agents:        host2, host3 (cmdop-install lab ssh --name {name} host2)\n"
        f"  tear down:     cmdop-install lab down --name {name}   (the site folder stays)"
    )


def prove_fleet(site_dir: Path, site, groups: dict, state, agents: list[str]) -> None:
    """Through the control plane's API: every agent is online, and a terminal session on
    each one runs `uname -a`. The API key used for it is made for this and revoked after."""
    workspace = site["site"]["name"]
    command = manage_command(f"issue_api_key --workspace {workspace} --name demo")
    issued = read_facts(groups, {"key": command}, limit=["host1"])
    key_id, _, key = issued.hosts["host1"].facts.get("key", "").partition(" ")
    if not key:
        raise UserError("demo: the control plane did not issue an API key (is it running?)")
    api = SiteApi(
        state.host("host1").ip, site["site"]["domain"], site_dir / "pki" / "ca.crt", key, workspace
    )
    try:
        machines = api.wait_online(agents)
        step(f"agents online: {', '.join(agents)}")
        for name in agents:
            line = api.run_in_session(machines[name]["machine_id"], "uname -a", b"Linux")
            step(f"session on {name}: $ uname -a -> {line.decode(errors='replace')}")
    finally:
        api.call("DELETE", f"/api-keys/{key_id}")


def step(message: str) -> None:
    click.echo(f"demo: {message}", nl=True)


@click.command("demo")
@click.option("--name", default="demo", show_default=True, help="Name of the demo lab.")
@click.option(
    "--site",
    "site_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sites/demo"),
    show_default=True,
    help="Where the demo site lives.",
)
def demo_command(name: str, site_dir: Path) -> None:
    """Deploy a whole CMDOP site onto three local lab hosts and prove it works."""
    run(name, site_dir)
