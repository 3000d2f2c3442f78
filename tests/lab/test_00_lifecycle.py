"""`lab up` then `lab down` leaves the machine as it was: no container, network, rule or route.

Runs first (file order) with its own small lab, before the shared session lab exists.
"""

import json
import re
import subprocess

import pytest
from cmdop_install.lab import core, paths

from tests.lab.helpers import cli

pytestmark = pytest.mark.lab

LAB = "citestlife"


def snapshot() -> dict[str, set[str]]:
    env = {"CONTAINERS_CONF": str(paths.containers_conf()), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def lines(*argv: str) -> set[str]:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
        return {ln.strip() for ln in out.splitlines() if ln.strip()}

    return {
        "containers": lines("podman", "ps", "-a", "--format", "{{.Names}}"),
        "networks": lines("podman", "network", "ls", "--format", "{{.Name}}"),
        "filter": lines("iptables", "-S"),
        "nat": lines("iptables", "-t", "nat", "-S"),
        # IPv4: the lab is IPv4-only; IPv6 link-local routes of veths come and go by themselves
        "routes": {
            r.replace(" linkdown", "") for r in lines("ip", "-4", "route", "show", "table", "all")
        },
    }


# netavark creates these empty base chains (and the jumps into them) the first time any
# podman network exists and never removes them; they hold no rule of ours.
NETAVARK_BASE = re.compile(
    r"^(-N NETAVARK\S*|-A \S+ .*-j NETAVARK\S*|-A NETAVARK-HOSTPORT-\S+ .*)$"
)


@pytest.fixture
def clean_up_on_failure():
    yield
    if paths.lab_dir(LAB).exists():
        cli("lab", "down", "--name", LAB, check=False)


def test_up_then_down_leaves_nothing_behind(clean_up_on_failure) -> None:
    before = snapshot()
    cli("lab", "up", "--name", LAB, "--hosts", "1", "--airgapped", "lifeair")
    during = snapshot()
    state = core.LabState.load(LAB)
    ours = (
        state.subnet.removesuffix("0/24"),
        state.air_subnet.removesuffix("0/24"),
        f"cmdop-lab:{LAB}",
    )
    assert {f"{LAB}-host1", f"{LAB}-lifeair"} <= during["containers"]
    assert {f"{LAB}-net", f"{LAB}-air"} <= during["networks"]
    assert any("blackhole 10.89.0.0/16" in r for r in during["routes"])
    assert sum(f"cmdop-lab:{LAB}" in r for r in during["filter"]) == 2

    again = cli("lab", "up", "--name", LAB, "--hosts", "1", "--airgapped", "lifeair")
    assert "nothing changed" in again.stdout
    assert snapshot() == during

    status = json.loads(cli("lab", "status", "--name", LAB, "--json").stdout)
    assert [h["state"] for h in status["hosts"]] == ["running", "running"]

    down = cli("lab", "down", "--name", LAB)
    assert "removed 2 host(s)" in down.stdout
    after = snapshot()
    for key in ("containers", "networks", "routes"):
        assert after[key] == before[key], key
    for key in ("filter", "nat"):
        new = {r for r in after[key] - before[key] if not NETAVARK_BASE.match(r)}
        assert new == set(), key
        # other labs may be up; nothing may mention this lab's subnets or tag
        assert not [r for r in after[key] if any(mark in r for mark in ours)]
    assert not paths.lab_dir(LAB).exists()
    assert paths.image_tar().exists(), "down keeps the cached image"
