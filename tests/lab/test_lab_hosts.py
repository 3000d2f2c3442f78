"""The shared lab: real hosts with systemd and sshd, reached over SSH with pyinfra."""

import socket
import threading
from urllib.parse import urlparse

import pytest
from cmdop_install.lab import image, network
from cmdop_install.runner import run_deploy

from tests.lab.conftest import NORMAL_HOSTS
from tests.lab.helpers import cli, inventory, lab_ssh

pytestmark = pytest.mark.lab

PROBE = "cmdop_install.deploys.lab_probe:probe"


def test_hosts_run_systemd_as_pid1_and_sshd(lab) -> None:
    assert [h.name for h in lab.hosts] == [*NORMAL_HOSTS, "air1"]
    for h in lab.hosts:
        out = lab_ssh(
            lab, h.name, "ps -p 1 -o comm=; systemctl is-active ssh; systemctl is-system-running"
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["systemd", "active", "running"]


def test_second_lab_up_changes_nothing(lab) -> None:
    out = cli(
        "lab", "up", "--name", lab.name, "--hosts", str(len(NORMAL_HOSTS)), "--airgapped", "air1"
    )
    assert "nothing changed" in out.stdout


def test_pyinfra_deploy_over_ssh_is_idempotent(lab) -> None:
    three = ["host1", "host2", "host3"]  # enough to show it; the rest would only add time
    first = run_deploy(inventory(lab), PROBE, limit=three)
    assert first.failed == []
    assert sorted(first.hosts) == three
    for h in first.hosts.values():
        assert h.changes >= 3, [(o.name, o.changed) for o in h.ops]
    second = run_deploy(inventory(lab), PROBE, limit=three)
    assert second.failed == []
    assert second.changes == 0, {
        h.name: [o.name for o in h.ops if o.changed] for h in second.hosts.values()
    }
    for h in lab.hosts[:3]:
        out = lab_ssh(
            lab,
            h.name,
            "systemctl is-enabled cmdop-lab-probe; systemctl is-active cmdop-lab-probe; "
            "dpkg-query -W -f='${Status}' tree",
        )
        assert out.stdout.split() == ["enabled", "active", "install", "ok", "installed"]


def test_dry_run_reports_without_changing(lab) -> None:
    dry = run_deploy(inventory(lab), PROBE, limit=["host1"], dry_run=True)
    assert list(dry.hosts) == ["host1"]
    assert dry.hosts["host1"].ops, "a dry run still lists the operations"


def test_airgapped_host_has_no_way_out_but_reaches_the_machine(lab) -> None:
    air = lab.host("air1")
    resolved = lab_ssh(lab, "air1", "getent hosts deb.debian.org")
    assert resolved.returncode != 0, "the air-gapped host must not resolve names"

    mirror = urlparse(image.host_mirror()).hostname
    mirror_ip = socket.gethostbyname(mirror)  # resolved here, on the machine
    reach = lab_ssh(lab, "air1", f"timeout 4 bash -c '</dev/tcp/{mirror_ip}/80' && echo reached")
    assert "reached" not in reach.stdout, "the air-gapped host reached the package mirror"
    apt = lab_ssh(lab, "air1", "sudo timeout 20 apt-get update 2>&1; echo rc=$?")
    assert "rc=0" not in apt.stdout or "Err:" in apt.stdout

    gateway = network.gateway(lab.air_subnet)
    with socket.create_server((gateway, 0)) as server:
        port = server.getsockname()[1]
        got: list[bytes] = []

        def serve() -> None:
            server.settimeout(15)
            conn, _ = server.accept()
            with conn:
                got.append(conn.recv(64))

        t = threading.Thread(target=serve)
        t.start()
        out = lab_ssh(lab, "air1", f"echo hello-from-air1 > /dev/tcp/{gateway}/{port} && echo sent")
        t.join(20)
    assert "sent" in out.stdout, out.stderr
    assert got and got[0].startswith(b"hello-from-air1")
    assert air.airgapped


def test_normal_hosts_do_reach_the_mirror(lab) -> None:
    out = lab_ssh(lab, "host1", "sudo apt-get update -qq && echo ok")
    assert "ok" in out.stdout, out.stderr


def test_lab_ssh_runs_a_command(lab) -> None:
    out = cli("lab", "ssh", "--name", lab.name, "host2", "--", "hostname")
    assert out.stdout.strip() == "host2"


def test_lab_ssh_unknown_host_is_one_line(lab) -> None:
    out = cli("lab", "ssh", "--name", lab.name, "nosuchhost", check=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"cmdop-install: error: lab '{lab.name}' has no host 'nosuchhost' "
        f"(hosts: {', '.join(NORMAL_HOSTS)}, air1)"
    ]


def test_every_host_routes_through_its_bridge_and_unused_lab_addresses_go_nowhere(lab) -> None:
    """The check `lab up` makes before waiting, on real routes: hosts via their bridges,
    an address of the lab range that no bridge carries hits the blackhole route."""
    from cmdop_install.lab import network

    for h in lab.hosts:
        assert network.route_device(h.ip) == network.bridge_of(lab.net_name(h.airgapped))
    assert network.route_device("10.89.255.254") is None
