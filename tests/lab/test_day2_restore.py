"""Restore onto new hosts: the deployed lab site (conftest ``site``, host1) is backed up, then
moved to a freshly made lab host of a lab of its own, as an operator whose database host
is lost does: inventory.py names the new host, `deploy` makes an empty site there, `restore`
brings the archive back. Users, API keys, machines and the audit chain are the old site's.
"""

import http.client
import json
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cmdop_install.inventory import load_inventory
from cmdop_install.lab import core, network
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.site import load_site

from tests.lab.conftest import LAB
from tests.lab.helpers import cli, lab_ssh, one_host_lab, row_counts

pytestmark = pytest.mark.lab

NAME = f"{LAB}-move"[:20]
TABLES = {"cmdop": ("identity_user", "identity_workspace", "identity_membership",
                    "identity_apikey", "machines_machine", "cmdop_sessions_session"),
          "cmdop_audit": ("audit_auditevent",)}


@pytest.fixture(scope="module")
def new_host() -> Iterator[core.LabState]:
    yield from one_host_lab(NAME)


def _get(address: str, site_dir: Path, token: str, path: str) -> tuple[int, bytes]:
    """(status, body) of GET ``path`` with bearer ``token`` through the site's nginx at
    ``address`` (waiting, at most a minute, while it starts)."""
    ctx = ssl.create_default_context(cafile=str(site_dir / "pki/ca.crt"))
    ctx.check_hostname = False  # the certificate names the site's domain; we dial the IP
    domain = load_site(site_dir)["site"]["domain"]
    deadline = time.monotonic() + 60
    while True:
        conn = http.client.HTTPSConnection(address, 443, context=ctx, timeout=10)
        conn.request("GET", path, headers={"Host": domain, "Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status not in (502, 503, 504) or time.monotonic() > deadline:
            return response.status, body
        time.sleep(1)


def _machines(address: str, site_dir: Path, key: str) -> tuple[int, list[str]]:
    """(status, machine host names) of the workspace's machines listed with API key ``key``."""
    status, body = _get(address, site_dir, key, "/api/v1/workspaces/labsite/machines")
    if status != 200:
        return status, []
    rows = json.loads(body)
    rows = rows.get("items", rows) if isinstance(rows, dict) else rows
    return 200, sorted(m["hostname"] for m in rows)


def test_a_backup_restored_onto_a_new_host_is_the_old_site(lab, site, new_host, tmp_path):
    issued = lab_ssh(lab, "host1", f"sudo {api_key_command('labsite', 'before-the-move')}")
    assert issued.returncode == 0, issued.stderr
    key = parse_api_key(issued.stdout)[1]
    old_address = lab.host("host1").ip
    status, machines = _machines(old_address, site.dir, key)
    assert status == 200 and machines, machines
    # an enrolled agent's machine credential (kept in this process, never printed)
    held = lab_ssh(lab, "host2", "sudo cat /var/lib/cmdop-agent/credential.json")
    assert held.returncode == 0, held.stderr
    credential = json.loads(held.stdout)["credential"]
    archive = Path(cli("backup", str(site.dir), "--out", str(tmp_path)).stdout.strip()
                   .removeprefix("backup: "))
    before = row_counts(lab, TABLES)

    # the operator's site folder, its inventory now naming the new host (no agents yet)
    moved = tmp_path / "labsite"
    shutil.copytree(site.dir, moved)
    (moved / "inventory.py").write_text(core.site_inventory_text(new_host, "host1", []))
    toml = moved / "site.toml"
    text = toml.read_text()
    old_gateway = network.gateway(lab.subnet)
    assert text.count(f'admin_sources = "{old_gateway}"') == 1
    toml.write_text(text.replace(f'admin_sources = "{old_gateway}"',
                                 f'admin_sources = "{network.gateway(new_host.subnet)}"'))
    new_address = new_host.host("host1").ip
    core.map_site_domain(load_inventory(moved).pyinfra_groups(),
                         load_site(moved)["site"]["domain"], new_address)
    deployed = cli("deploy", str(moved), check=False)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert _machines(new_address, moved, key)[0] == 401  # an empty site: not restored yet

    done = cli("restore", str(moved), str(archive), "--yes", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit chain intact" in done.stdout
    assert row_counts(new_host, TABLES) == before
    assert _machines(new_address, moved, key) == (200, machines)
    # the agent's existing credential is the restored site's too: its poll is answered, while
    # a credential the site never issued is refused
    poll = "/api/agent/v1/work?wait=0"
    assert _get(new_address, moved, credential, poll)[0] == 200
    assert _get(new_address, moved, "mc_" + "0" * 43, poll)[0] == 401
