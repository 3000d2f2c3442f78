"""`molecule test` of molecule/default: the Ansible roles converge one control-plane host and
two agents, change nothing on a second run, and pass the security verify (molecule/default/
verify.yml), every file compared with `cmdop-install render`'s manifest.

The site is made here with the real CLI (init, export-ansible, render) over the scenario's
fixed addresses; molecule's podman hosts use the lab's image, containers.conf and safety
route, on a network of the scenario's own that molecule removes at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cmdop_install.lab import core, image, network, system
from cmdop_install.sitedir import SiteDir

from tests.lab.helpers import (
    ansible_export,
    cli,
    molecule,
    molecule_changed,
    molecule_failures,
    ssh_control_folder,
)

# About 5 minutes on this 2-core machine (create 0:10, converge 2:45, idempotence 0:55,
# verify 0:25, destroy 0:10)
pytestmark = pytest.mark.lab

HOSTS = {"molecule-cp1": "10.89.200.10", "molecule-agent1": "10.89.200.11",
         "molecule-agent2": "10.89.200.12"}
NETWORK = "cmdop-molecule-default"
SUBNET = "10.89.200.0/24"


def _inventory() -> str:
    def entry(name: str) -> str:
        return f'("{name}", {{"ssh_hostname": "{HOSTS[name]}"}})'

    return (
        f"_CONTROL = {entry('molecule-cp1')}\n"
        "postgres = [_CONTROL]\nredis = [_CONTROL]\ncentrifugo = []\ncontrol_plane = [_CONTROL]\n"
        f"agents = [{entry('molecule-agent1')}, {entry('molecule-agent2')}]\n"
    )


def _ssh_access(folder: Path) -> None:
    """The scenario's key (its authorized_keys is mounted into each host, as the lab does) and
    an ssh config naming each host's address; a host's key is new with every run, so it is
    accepted on first sight into this run's own known_hosts."""
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cmdop-molecule",
                    "-f", str(key)], check=True)
    (folder / "authorized_keys").write_text((folder / "id_ed25519.pub").read_text())
    (folder / "authorized_keys").chmod(0o644)
    hosts = "".join(f"Host {name}\n  HostName {ip}\n" for name, ip in HOSTS.items())
    (folder / "config").write_text(
        f"{hosts}Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {folder / 'known_hosts'}\n  StrictHostKeyChecking accept-new\n")


def _left_over(env: dict[str, str]) -> list[str]:
    names = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}"], env=env,
                           capture_output=True, text=True, check=True).stdout.split()
    networks = subprocess.run(["podman", "network", "ls", "--format", "{{.Name}}"], env=env,
                              capture_output=True, text=True, check=True).stdout.split()
    return [n for n in names if n in HOSTS] + [n for n in networks if n == NETWORK]


@pytest.fixture
def safety_route() -> Iterator[None]:
    """The lab's safety route under the scenario's network, taken away after the run as
    `lab down` does: only when no lab and no other network in the range still needs it."""
    if os.geteuid() != 0:
        pytest.skip("molecule's podman hosts need root")
    network.ensure_blackhole()
    yield
    core.release_safety_route()


def test_molecule_default_converges_is_idempotent_and_verifies(tmp_path: Path,
                                                               safety_route: None) -> None:
    system.write_containers_conf()
    image.ensure_image()  # the lab's one image recipe, cached
    env = system.podman_env()
    assert _left_over(env) == [], "a molecule run is left over: molecule destroy"

    site_dir = tmp_path / "site"
    site_dir.mkdir(mode=0o700)
    (site_dir / "inventory.py").write_text(_inventory())
    cli("init", str(site_dir), "--key-file", str(tmp_path / "site.key"))
    exported = ansible_export(site_dir, tmp_path)
    manifest = json.loads(Path(exported["CMDOP_MOLECULE_MANIFEST"]).read_text())
    assert set(manifest["hosts"]) == set(HOSTS)

    log = tmp_path / "molecule.log"  # followed live with tail -f while it runs
    with ssh_control_folder("cmdop-mol-") as ssh:
        _ssh_access(ssh)
        scenario_env = {**exported, "CMDOP_MOLECULE_SSH": str(ssh)}
        # the scenario's own network, in the lab's supernet above the labs' subnets
        subprocess.run(["podman", "network", "create", "--subnet", SUBNET, NETWORK], env=env,
                       capture_output=True, text=True, check=True)
        try:
            run = molecule("test", "default", scenario_env, log, timeout=1200)
        finally:
            # molecule test's own destroy ends every run that was not killed
            if _left_over(env):
                molecule("destroy", "default", scenario_env, tmp_path / "destroy.log",
                         timeout=600)
    output = log.read_text()
    assert run.returncode == 0, molecule_failures(output)
    assert molecule_changed(output, "default", "idempotence") == dict.fromkeys(HOSTS, 0)
    assert _left_over(env) == []
    secrets = SiteDir.load(site_dir).secrets.values()
    assert not any(v in output for v in secrets if len(v) >= 12)
