"""One lab per test run, shared by every lab test (session scope), torn down at the end.

host1 carries Postgres, Redis and the control plane; host2..host5 are agent hosts (four,
for the rollout test). The site is deployed once, by the first test that needs it.
"""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from cmdop_install.bundle import keygen
from cmdop_install.inventory import load_inventory
from cmdop_install.lab import core, image, network, system
from cmdop_install.secrets import SecretStore
from cmdop_install.site import load_site

from tests.lab.helpers import cli

# CMDOP_TEST_LAB lets two developers on one machine run lab tests side by side
# (each lab gets its own subnets); never two full lab suites at once on 2 cores.
LAB = os.environ.get("CMDOP_TEST_LAB", "citest")
NORMAL_HOSTS = ["host1", "host2", "host3", "host4", "host5"]
AGENT_HOSTS = NORMAL_HOSTS[1:]
PS_SAMPLES = 3000  # bounded: at most ~5 minutes of `ps` every 0.1 s


@pytest.fixture(scope="session")
def lab() -> Iterator[core.LabState]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    try:
        cli("lab", "up", "--name", LAB, "--hosts", str(len(NORMAL_HOSTS)), "--airgapped", "air1")
        state = core.LabState.load(LAB)
        assert state is not None
        yield state
    finally:
        # also after a failed `lab up`: no half-made lab (containers, networks, rules) stays
        cli("lab", "down", "--name", LAB, check=False)


@pytest.fixture(scope="session")
def offline_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A bundle built once per session against the lab image (the Debian closure is computed
    against a fresh host's packages), and the public key it is signed with."""
    if os.geteuid() != 0:
        pytest.skip("the lab image needs root")
    system.write_containers_conf()
    image.ensure_image()
    base = tmp_path_factory.mktemp("bundle")
    key = base / "keys" / "bundle.key"
    pub = keygen(key)
    cli("bundle", "build", "--out", str(base / "cmdop.bundle"), "--signing-key", str(key))
    return base / "cmdop.bundle", pub


@pytest.fixture(scope="session")
def site(lab, tmp_path_factory: pytest.TempPathFactory):
    """The site deployed with the real CLI, `ps` sampled on host1 all the while."""
    base = tmp_path_factory.mktemp("site")
    site_dir = base / "labsite"
    site_dir.mkdir(mode=0o700)
    (site_dir / "inventory.py").write_text(core.site_inventory_text(lab, "host1", AGENT_HOSTS))
    cli("init", str(site_dir), "--key-file", str(base / "site.key"))
    # this machine checks Postgres and Redis TLS from outside: the firewall must let it in
    toml = site_dir / "site.toml"
    text = toml.read_text()
    assert text.count('\nadmin_sources = ""') == 1
    gateway = network.gateway(lab.subnet)
    text = text.replace('\nadmin_sources = ""', f'\nadmin_sources = "{gateway}"')
    # and scrape /metrics (test_site_resilience: the other lab hosts are refused)
    assert text.count('\nallowed_sources = ""') == 1
    toml.write_text(text.replace('\nallowed_sources = ""', f'\nallowed_sources = "{gateway}"'))
    site = load_site(site_dir)
    inventory = load_inventory(site_dir)
    groups = inventory.pyinfra_groups()
    core.map_site_domain(groups, site["site"]["domain"], lab.host("host1").ip)
    sampler = subprocess.Popen(
        core.ssh_argv(
            lab, "host1", f"for i in $(seq {PS_SAMPLES}); do ps -eo args; sleep 0.1; done"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    first = cli("deploy", str(site_dir))
    sampler.terminate()
    ps_output, _ = sampler.communicate(timeout=30)
    secrets = SecretStore.open(site_dir, site["site"]["key_file"]).values()
    return SimpleNamespace(
        dir=site_dir, first=first, ps=ps_output, secrets=secrets, ca=site_dir / "pki" / "ca.crt"
    )
