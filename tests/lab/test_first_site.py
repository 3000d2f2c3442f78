"""The README's first site, onto a fresh lab host used as bare metal.

`init`, set the host's address in the inventory.py that `init` wrote (keeping its example
name, node1, while the host calls itself host1, as on bare metal), put it in every group
including `agents`, log in as a non-root user with pyinfra's `"_sudo": True`, `check`,
`deploy`; `status` then shows the agent online. The host is its own one-host lab, so this
file runs without the shared lab of the other lab tests.
"""

import json
import time
from collections.abc import Iterator

import pytest
from cmdop_install.inventory import load_inventory
from cmdop_install.lab import core
from cmdop_install.site import load_site

from tests.lab.conftest import LAB
from tests.lab.helpers import cli, lab_ssh, one_host_lab

pytestmark = pytest.mark.lab

NAME = f"{LAB}-first"[:20]
STATUS_TIMEOUT = 120.0  # the agent reports on enrolment, then every 30 s


@pytest.fixture(scope="module")
def bare_host() -> Iterator[core.LabState]:
    yield from one_host_lab(NAME)


def test_the_documented_first_site_deploys_and_its_agent_shows_online(bare_host, tmp_path):
    site = tmp_path / "mysite"
    cli("init", str(site), "--key-file", str(tmp_path / "site.key"))
    ip = bare_host.host("host1").ip
    access = {**core.ssh_data(bare_host), "_sudo": True}  # the lab's own inventory idiom
    inventory = (site / "inventory.py").read_text()
    assert inventory.count('"ssh_hostname": "192.0.2.10"') == 1
    assert inventory.count("\nagents = []") == 1
    inventory = inventory.replace(
        '"ssh_hostname": "192.0.2.10"',
        f'"ssh_hostname": "{ip}", ' + ", ".join(f"{k!r}: {v!r}" for k, v in access.items()),
    ).replace("\nagents = []", "\nagents = [_node1]")
    (site / "inventory.py").write_text(inventory)
    hostname = lab_ssh(bare_host, "host1", "hostname").stdout.strip()
    assert hostname == "host1", "the host must call itself something else than node1"

    checked = cli("check", str(site))
    assert checked.stdout.splitlines()[-1].startswith("check: ok")
    assert f"warning: pki/postgres-node1.crt: names node1, node1.internal, 192.0.2.10, but " \
           f"inventory.py now gives node1, node1.internal, {ip}" in checked.stdout

    config, groups = load_site(site), load_inventory(site).pyinfra_groups()
    core.map_site_domain(groups, config["site"]["domain"], ip)  # DNS, as on a real network
    deployed = cli("deploy", str(site), check=False)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert deployed.stdout.startswith(
        "issued certificates: postgres-node1, redis-node1, nginx-node1, app-node1\n")
    assert deployed.stdout.rstrip().endswith("change(s) on 1 host(s)")

    deadline = time.monotonic() + STATUS_TIMEOUT
    while True:
        status = json.loads(cli("status", str(site), "--json").stdout)
        (node,) = status["hosts"]
        agent = next(c for c in node["components"] if c["component"] == "agents")
        if agent["online"] or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert node["host"] == "node1" and "error" not in node, node
    assert agent["state"] == "active", agent
    assert agent["online"] is True and agent["last_seen"], agent
    assert status["last_deploy"]["failed"] == []
    text = cli("status", str(site)).stdout
    assert "OFFLINE" not in text and "online" in text, text
