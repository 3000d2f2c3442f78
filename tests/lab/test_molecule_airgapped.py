"""`molecule test -s airgapped`: the Ansible roles converge a single-node site (Postgres,
Redis, the control plane behind nginx and an agent on one host) onto the lab's air-gapped
host from the signed offline bundle alone, change nothing on a second run, and verify that
apt read the bundle's source only and that the agent runs a command through the control
plane (issue 16.4).

The lab is this file's own (one normal host, unused, and air1 on the --internal network: no
route out, DNS 127.0.0.1). The site is made with the real CLI over air1 and exported with
`export-ansible --bundle`, which verifies the bundle first. All the while the same raw
PREROUTING counters as tests/lab/test_airgapped.py see every IPv4 packet air1's bridge
delivers: toward any address outside its subnet none, and a deliberate attempt afterwards is
counted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cmdop_install.inventory import load_inventory
from cmdop_install.lab import core, system
from cmdop_install.site import load_site
from cmdop_install.sitedir import SiteDir

from tests.lab.conftest import LAB
from tests.lab.helpers import (
    cli,
    counting_air,
    lab_ssh,
    molecule_changed,
    molecule_failures,
    one_host_lab,
)

# CI runs molecule/default (about 6 minutes) on every submission; this scenario runs on
# demand: CMDOP_TEST_MOLECULE_AIRGAPPED=1
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.environ.get("CMDOP_TEST_MOLECULE_AIRGAPPED") != "1",
                       reason="set CMDOP_TEST_MOLECULE_AIRGAPPED=1 to run molecule/airgapped"),
]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
NAME = f"{LAB}-mair"[:20]
HOST = "air1"
# an address of the lab range that no bridge carries: the lab's blackhole route drops it
NOWHERE = "10.89.255.254"


@pytest.fixture(scope="module")
def air_lab() -> Iterator[core.LabState]:
    yield from one_host_lab(NAME, HOST)


@pytest.fixture(scope="module")
def exported(air_lab, offline_bundle, tmp_path_factory) -> dict[str, str]:
    """A single-node site on air1 (its agent too) trusting the bundle's key, exported with
    the bundle: molecule's environment."""
    bundle, pub = offline_bundle
    base = tmp_path_factory.mktemp("molair")
    site = base / "site"
    site.mkdir(mode=0o700)
    (site / "inventory.py").write_text(core.site_inventory_text(air_lab, HOST, [HOST]))
    cli("init", str(site), "--key-file", str(base / "site.key"))
    toml = site / "site.toml"
    text = toml.read_text()
    assert text.count('\npubkey = ""') == 1
    toml.write_text(text.replace('\npubkey = ""', f'\npubkey = "{pub}"'))
    core.map_site_domain(load_inventory(site).pyinfra_groups(), load_site(site)["site"]["domain"],
                         air_lab.host(HOST).ip)
    vault_pass = base / "vault-pass"
    cli("export-ansible", str(site), str(base / "export"), "--vault-password-file",
        str(vault_pass), "--bundle", str(bundle))
    return {
        "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_pass),
        "CMDOP_MOLECULE_EXPORT": str(base / "export"),
        "CMDOP_MOLECULE_SITE": str(site),
        "CMDOP_MOLECULE_SSH_CONFIG": str(air_lab.dir / "ssh_config"),
    }


def test_molecule_airgapped_converges_from_the_bundle_alone(air_lab, exported) -> None:
    # short: ssh's control sockets live in it (a unix socket path has 108 bytes at most)
    ssh = Path(tempfile.mkdtemp(prefix="cmdop-mair-"))
    env = {**system.podman_env(), **exported, "CMDOP_MOLECULE_SSH": str(ssh),
           "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    log = Path(exported["CMDOP_MOLECULE_EXPORT"]).parent / "molecule.log"  # tail -f it
    try:
        with counting_air(air_lab, HOST) as counters, log.open("w") as out:
            run = subprocess.run([str(VENV_BIN / "molecule"), "test", "-s", "airgapped"],
                                 cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 timeout=780, check=False)
            counted = counters.packets()
            # and the outside counter does see an attempt to get out
            tried = lab_ssh(air_lab, HOST, f"timeout 5 bash -c '</dev/tcp/{NOWHERE}/80'")
            attempt = counters.packets()["outside"]
    finally:
        for socket in [p for p in ssh.iterdir() if p.is_socket()]:  # masters Ansible left
            subprocess.run(["ssh", "-S", str(socket), "-O", "exit", "molecule"],
                           capture_output=True, timeout=30, check=False)
        shutil.rmtree(ssh)
    output = log.read_text()
    assert run.returncode == 0, molecule_failures(output)
    assert molecule_changed(output, "airgapped", "idempotence") == {HOST: 0}
    assert counted["inside"] > 0, "the counters must see air1's own traffic"
    assert counted["outside"] == 0, counted
    assert tried.returncode != 0 and attempt > 0
    secrets = SiteDir.load(Path(exported["CMDOP_MOLECULE_SITE"])).secrets.values()
    assert not any(v in output for v in secrets if len(v) >= 12)
