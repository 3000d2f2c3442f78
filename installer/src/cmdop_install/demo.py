"""The README's main command: a whole CMDOP site deployed onto local lab hosts.

``cmdop-install demo`` brings up three lab hosts (host1: Postgres, Redis, nginx and the
control plane; host2 and host3: agents), makes a site for them (``sites/demo`` next to the
current directory unless ``--site`` says otherwise), deploys the control-plane host, rolls
the agents out (``agents rollout``: a canary, then the rest, each gated on the control
plane), deploys the whole site again to show that nothing changes, then proves the fleet end
to end through the control plane, the last proof a ``cmdop exec`` from one agent host to
another.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import click

from cmdop_install import manage
from cmdop_install.deploy import deploy_site
from cmdop_install.deploys.agent import VENV as AGENT_VENV
from cmdop_install.errors import UserError
from cmdop_install.lab import core
from cmdop_install.rollout import Rollout, summary_lines
from cmdop_install.runner import read_facts
from cmdop_install.site_api import SiteApi
from cmdop_install.sitedir import SiteDir
from cmdop_install.siteinit import init_site

AGENT_CMDOP = f"{AGENT_VENV}/bin/cmdop"


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
    site = SiteDir.load(site_dir)
    config = site.config
    core.map_site_domain(site.inventory.pyinfra_groups(), config["site"]["domain"],
                         state.host("host1").ip)

    t = time.monotonic()
    result = deploy_site(site, limit=["control_plane"])
    if result.failed:
        raise UserError(f"demo: the deploy failed on {', '.join(result.failed)}")
    step(
        f"deploy host1 (Postgres, Redis, control plane, nginx): {result.changes} change(s) "
        f"in {time.monotonic() - t:.0f}s"
    )
    t = time.monotonic()
    rollout = Rollout(site, lambda line: step(f"  {line}"), health_timeout=180)
    step("roll the agents out (a canary first, then the rest; each must report in):")
    outcome = rollout.run(None, "100%", 1, "0")
    for line in summary_lines(outcome):
        step(f"  {line}")
    if outcome.stopped or outcome.failed:
        raise UserError(f"demo: the agent rollout failed on {', '.join(outcome.failed)}")
    step(f"agents rolled out in {time.monotonic() - t:.0f}s")
    t = time.monotonic()
    result = deploy_site(site)
    step(
        f"deploy the whole site again (must change nothing): {result.changes} change(s) on "
        f"{len(result.hosts)} host(s) in {time.monotonic() - t:.0f}s"
    )
    if result.failed or result.changes:
        for line in result.host_lines():
            step(f"  {line}")
        raise UserError(f"demo: the second deploy changed {result.changes} thing(s)")

    prove_fleet(site, state, rollout.hostnames)

    domain = config["site"]["domain"]
    owner = config["site"]["owner_email"] or f"admin@{domain}"
    click.echo(
        f"\nCMDOP is up in {time.monotonic() - started:.0f}s.\n"
        f"  control plane: {config['site']['public_url']}  (host1, {state.host('host1').ip}; "
        f"map {domain} to it in your /etc/hosts to browse)\n"
        f"  site CA:       {site_dir / 'pki' / 'ca.crt'}\n"
        f"  owner:         {owner}; password: "
        f"cmdop-install secrets show {site_dir} owner_password\n"
        f"  agents:        host2, host3 (cmdop-install lab ssh --name {name} host2)\n"
        f"  as a person:   cmdop login --server {config['site']['public_url']} "
        f"--ca {site_dir / 'pki' / 'ca.crt'}\n"
        f"                 then: cmdop machines; "
        f"cmdop exec {next(iter(rollout.hostnames.values()), 'HOST')} -- uname -a\n"
        f"  tear down:     cmdop-install lab down --name {name}   (the site folder stays)"
    )


def prove_fleet(site: SiteDir, state: core.LabState, hostnames: dict[str, str]) -> None:
    """Through the control plane's API (on host1): every agent (inventory name -> its own
    host name) is online, a terminal session on each one runs `uname -a`, and `cmdop exec`
    runs one on the first agent. The API key used for it is made for this and revoked after."""
    first = site.inventory.groups["control_plane"][0].name
    command = manage.api_key_command(site.name, "demo")
    issued = read_facts(site.inventory.pyinfra_groups(), {"key": command}, limit=[first])
    key_id, key = manage.parse_api_key(issued.hosts[first].facts.get("key", ""))
    machine_names = {name: manage.machine_key(h) for name, h in hostnames.items()}
    api = SiteApi(state.host("host1").ip, site.config["site"]["domain"],
                  site.path / "pki" / "ca.crt", key, site.name)
    try:
        machines = api.wait_online(list(machine_names.values()))
        step(f"agents online: {', '.join(hostnames)}")
        for name, machine_name in machine_names.items():
            machine = machines[machine_name]
            line = api.run_in_session(machine["machine_id"], "uname -a", b"Linux")
            step(f"session on {name}: $ uname -a -> {line.decode(errors='replace')}")
        names = list(machine_names)
        target, client = names[0], names[-1]
        step(f"cmdop on {client}: $ cmdop exec {machine_names[target]} -- uname -a")
        for out in cmdop_exec(site, state, client, key, machine_names[target], "uname -a"):
            step(f"  {out}")
    finally:
        api.call("DELETE", f"/api-keys/{key_id}")


def cmdop_exec(site: SiteDir, state: core.LabState, client: str, key: str, machine: str,
               command: str) -> list[str]:
    """``cmdop exec`` as a person runs it, with the client every agent host has (the agent
    wheel's second command) run as the lab's SSH user on ``client``: the API key and the
    site's CA reach it on stdin, never in argv or a file others can read. Its output lines."""
    script = (
        'set -e; IFS= read -r CMDOP_API_KEY; export CMDOP_API_KEY; ca=$(mktemp); '
        'trap \'rm -f "$ca"\' EXIT; cat > "$ca"; '
        f"{AGENT_CMDOP} exec --server {shlex.quote(site.config['site']['public_url'])} "
        f'--ca "$ca" -w {shlex.quote(site.name)} {shlex.quote(machine)} -- {command}'
    )
    ca = (site.path / "pki" / "ca.crt").read_text()
    done = subprocess.run(core.ssh_argv(state, client, f"sh -c {shlex.quote(script)}"),
                          input=f"{key}\n{ca}", capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise UserError(f"demo: cmdop exec on {client} failed ({done.returncode}): "
                        f"{done.stderr.strip()[-300:]}")
    return done.stdout.splitlines()


def step(message: str) -> None:
    click.echo(f"demo: {message}", nl=True)
