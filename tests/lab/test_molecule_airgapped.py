"""`molecule test -s airgapped`: the Ansible roles converge a single-node site (Postgres,
Redis, the control plane behind nginx and an agent on one host) onto the lab's air-gapped
host from the signed offline bundle alone, change nothing on a second run, and pass verify:
apt read the bundle's source only, and the default scenario's security verify (every file as
`cmdop-install render` made it, TLS 1.3 only with a chain to the site CA, no weak pg_hba
method, no Redis default user, private secret files, the agent enrolled, listening nowhere
and running a command through the control plane) (issues 15 and 16.4).

The lab is this file's own (one normal host, unused, and air1 on the --internal network: no
route out, DNS 127.0.0.1). The site is made with the real CLI over air1 and exported with
`export-ansible --bundle`, which verifies the bundle first. All the while the same raw
PREROUTING counters as tests/lab/test_airgapped.py see every IPv4 packet air1's bridge
delivers: toward any address outside its subnet none, and a deliberate attempt afterwards is
counted.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cmdop_install.lab import core
from cmdop_install.sitedir import SiteDir

from tests.lab.conftest import LAB
from tests.lab.helpers import (
    ansible_export,
    bundle_site,
    counting_air,
    molecule,
    molecule_changed,
    molecule_failures,
    one_host_lab,
    ssh_control_folder,
    try_to_get_out,
)

# About 4 minutes on this 2-core machine (the lab's 20 s, converge 2, idempotence 1, verify
# 0:30), the bundle aside (the session's, shared with test_airgapped)
pytestmark = pytest.mark.lab

NAME = f"{LAB}-mair"[:20]
HOST = "air1"


@pytest.fixture(scope="module")
def air_lab() -> Iterator[core.LabState]:
    yield from one_host_lab(NAME, HOST)


def test_molecule_airgapped_converges_from_the_bundle_alone(air_lab, offline_bundle,
                                                            tmp_path) -> None:
    bundle, pub = offline_bundle
    site = bundle_site(air_lab, HOST, [HOST], tmp_path, pub)
    exported = ansible_export(site, tmp_path, "--bundle", str(bundle))
    log = tmp_path / "molecule.log"  # tail -f it
    with ssh_control_folder("cmdop-mair-") as ssh, counting_air(air_lab, HOST) as counters:
        env = {**exported, "CMDOP_MOLECULE_SSH": str(ssh),
               "CMDOP_MOLECULE_SSH_CONFIG": str(air_lab.dir / "ssh_config")}
        run = molecule("test", "airgapped", env, log, timeout=780)
        counted = counters.packets()
        # and the outside counter does see an attempt to get out
        tried = try_to_get_out(air_lab, HOST)
        attempt = counters.packets()["outside"]
    output = log.read_text()
    assert run.returncode == 0, molecule_failures(output)
    assert molecule_changed(output, "airgapped", "idempotence") == {HOST: 0}
    assert counted["inside"] > 0, "the counters must see air1's own traffic"
    assert counted["outside"] == 0, counted
    assert tried.returncode != 0 and attempt > 0
    secrets = SiteDir.load(site).secrets.values()
    assert not any(v in output for v in secrets if len(v) >= 12)
