"""Helpers for lab tests: the real CLI, ssh to a lab host, the lab's inventory, a lab of
one host of a test's own, a site trusting an offline bundle, row counts on a site's database
host, packet counters on the air-gapped bridge, molecule's run and its log read."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cmdop_install.inventory import load_inventory
from cmdop_install.lab import core, network, system
from cmdop_install.manage import fleet_status_command, parse_fleet
from cmdop_install.site import load_site


def cli(*args: str, check: bool = True, input: str = "") -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it (``input`` on its stdin)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cmdop_install.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cmdop-install {' '.join(args)} failed: {proc.stderr}")
    return proc


def lab_ssh(state: core.LabState, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        core.ssh_argv(state, host, command), capture_output=True, text=True, timeout=60, check=False
    )


def manage(state: core.LabState, command: str) -> str:
    """The output of a management command run as root on host1 (the control plane), which
    must succeed."""
    out = lab_ssh(state, "host1", f"sudo {command}")
    assert out.returncode == 0, out.stderr
    return out.stdout


def fleet(state: core.LabState, site_dir: Path) -> dict[str, dict]:
    """The site's machines by host name, as the control plane reports them."""
    return parse_fleet(manage(state, fleet_status_command(load_site(site_dir)["site"]["name"])))


def redis_started(state: core.LabState) -> str:
    """redis-server's main PID and start time on host1: the same after a change means Redis
    was not restarted."""
    out = manage(state, "systemctl show -p MainPID -p ExecMainStartTimestamp redis-server")
    assert "MainPID=0" not in out, out
    return out


def inventory(state: core.LabState) -> dict:
    """The lab's hosts as pyinfra groups."""
    return core.inventory_groups(state)


def one_host_lab(name: str, *airgapped: str) -> Iterator[core.LabState]:
    """A lab of one fresh host named ``name`` (for a module fixture), and the ``airgapped``
    hosts, down again afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    try:
        cli("lab", "up", "--name", name, "--hosts", "1",
            *(arg for air in airgapped for arg in ("--airgapped", air)))
        state = core.LabState.load(name)
        assert state is not None
        yield state
    finally:
        cli("lab", "down", "--name", name, check=False)


def bundle_site(lab: core.LabState, host: str, agents: list[str], base: Path,
                pubkey: Path) -> Path:
    """A single-node site in ``base``/site over ``host`` (every group; ``agents`` the fleet)
    trusting the offline bundles signed by ``pubkey``, its domain mapped to ``host``."""
    site = base / "site"
    site.mkdir(mode=0o700)
    (site / "inventory.py").write_text(core.site_inventory_text(lab, host, agents))
    cli("init", str(site), "--key-file", str(base / "site.key"))
    toml = site / "site.toml"
    text = toml.read_text()
    assert text.count('\npubkey = ""') == 1
    toml.write_text(text.replace('\npubkey = ""', f'\npubkey = "{pubkey}"'))
    core.map_site_domain(load_inventory(site).pyinfra_groups(), load_site(site)["site"]["domain"],
                         lab.host(host).ip)
    return site


def row_counts(state: core.LabState, tables: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Rows per table ({database: tables}), read on host1 as the postgres superuser (peer,
    local socket)."""
    counts = {}
    for db, names in tables.items():
        query = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in names)  # noqa: S608
        out = lab_ssh(state, "host1", f'sudo runuser -u postgres -- psql -d {db} -XtA -F " " '
                                      f'-c "{query}"')
        assert out.returncode == 0, out.stderr
        counts.update(line.split() for line in out.stdout.splitlines())
    return counts


class AirCounters:
    """Rules with no target (they only count) at the top of the raw table's PREROUTING: every
    IPv4 packet from the lab's air-gapped bridge, before any routing or firewall decision,
    toward the air-gapped subnet itself (``inside``) and toward any other address
    (``outside``). Tagged with the lab's name: another lab's counters are other rules."""

    def __init__(self, lab: core.LabState) -> None:
        bridge = network.bridge_of(lab.net_name(True))
        tag = f"cmdop-test:{lab.name}:airgap"
        self.rules = {
            "inside": ["-i", bridge, "-d", lab.air_subnet, "-m", "comment", "--comment",
                       f"{tag}-inside"],
            "outside": ["-i", bridge, "!", "-d", lab.air_subnet, "-m", "comment", "--comment",
                        f"{tag}-outside"],
        }

    def __enter__(self) -> AirCounters:
        for rule in self.rules.values():
            subprocess.run(["iptables", "-w", "-t", "raw", "-I", "PREROUTING", *rule], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for rule in self.rules.values():
            subprocess.run(["iptables", "-w", "-t", "raw", "-D", "PREROUTING", *rule],
                           check=False)

    def packets(self) -> dict[str, int]:
        listing = subprocess.run(
            ["iptables", "-w", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"],
            capture_output=True, text=True, check=True).stdout.splitlines()
        return {kind: sum(int(line.split()[0]) for line in listing if f"/* {rule[-1]} */" in line)
                for kind, rule in self.rules.items()}


@contextlib.contextmanager
def counting_air(lab: core.LabState, host: str) -> Iterator[AirCounters]:
    """The counters, and the air-gapped ``host`` given a default route to this machine
    meanwhile: the kernel refuses a connect to an address it has no route to before any
    packet exists; with the route every attempt to get out is a packet the counter sees (and
    the air-gap rules drop)."""
    none = lab_ssh(lab, host, "ip -4 route show default")
    assert none.returncode == 0 and none.stdout == "", f"{host} must have no route out"
    gateway = network.gateway(lab.air_subnet)
    added = lab_ssh(lab, host, f"sudo ip route add default via {gateway}")
    assert added.returncode == 0, added.stderr
    try:
        with AirCounters(lab) as counted:
            yield counted
    finally:
        lab_ssh(lab, host, f"sudo ip route del default via {gateway}")


def ansible_export(site_dir: Path, base: Path, *args: str) -> dict[str, str]:
    """The site exported for Ansible into ``base`` (``args`` to export-ansible, e.g.
    --bundle) and `cmdop-install render`'s manifest.json beside it, as molecule's scenarios
    read them from the environment. Of the rendered files (secrets among them) only the
    manifest is kept."""
    export, vault_pass = base / "export", base / "vault-pass"
    cli("export-ansible", str(site_dir), str(export), "--vault-password-file", str(vault_pass),
        *args)
    rendered = base / "rendered"
    cli("render", str(site_dir), "--out", str(rendered))
    manifest = base / "manifest.json"
    manifest.write_text((rendered / "manifest.json").read_text())
    shutil.rmtree(rendered)
    return {
        "ANSIBLE_VAULT_PASSWORD_FILE": str(vault_pass),
        "CMDOP_MOLECULE_EXPORT": str(export),
        "CMDOP_MOLECULE_SITE": str(site_dir),
        "CMDOP_MOLECULE_MANIFEST": str(manifest),
    }


@contextlib.contextmanager
def ssh_control_folder(prefix: str) -> Iterator[Path]:
    """A short folder for ssh's control sockets (a unix socket path has 108 bytes at most);
    afterwards the masters Ansible left open (ControlPersist) exit and the folder goes."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        for socket in [p for p in folder.iterdir() if p.is_socket()]:
            subprocess.run(["ssh", "-S", str(socket), "-O", "exit", "molecule"],
                           capture_output=True, timeout=30, check=False)
        shutil.rmtree(folder)


def molecule(command: str, scenario: str, env: dict[str, str], log: Path,
             timeout: int) -> subprocess.CompletedProcess[str]:
    """`molecule COMMAND -s SCENARIO` from the repository's root with this virtualenv's tools
    and the lab's containers.conf, ``env`` added, its output in ``log`` (tail -f it)."""
    venv_bin = Path(sys.executable).parent
    with log.open("w") as out:
        return subprocess.run(
            [str(venv_bin / "molecule"), command, "-s", scenario],
            cwd=Path(__file__).resolve().parents[2],
            env={**system.podman_env(), "PATH": f"{venv_bin}:{os.environ['PATH']}", **env},
            stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


# an address of the lab range that no bridge carries: the lab's blackhole route drops it
NOWHERE = "10.89.255.254"


def try_to_get_out(lab: core.LabState, host: str) -> subprocess.CompletedProcess[str]:
    """A connection attempt from ``host`` to an address outside its subnet (it must fail; the
    outside counter sees it)."""
    return lab_ssh(lab, host, f"timeout 5 bash -c '</dev/tcp/{NOWHERE}/80'")


def molecule_changed(output: str, scenario: str, phase: str) -> dict[str, int]:
    """The PLAY RECAP's changed= of each host in one phase of a molecule scenario's log."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)
    # molecule writes "default ➜ idempotence: Executing" with a UTF-8 locale and
    # "[default > idempotence] Executing" without one (CI's minimal environment)
    mark = rf"{scenario} (?:➜|>) {phase}\]?:? Execut"
    start = re.search(mark + "ing", plain)
    assert start is not None, f"no {phase} phase in molecule's log"
    end = re.compile(mark + "ed").search(plain, start.end())
    assert end is not None, f"the {phase} phase did not end in molecule's log"
    recap = re.findall(r"(\S+)\s+: ok=\d+\s+changed=(\d+)", plain[start.end():end.start()])
    return {host: int(changed) for host, changed in recap}


def molecule_failures(output: str) -> str:
    """What failed in a molecule log: each failing task with what follows it."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if "fatal:" in line or "failed:" in line]
    excerpt = [line for i in starts[:5] for line in lines[max(i - 3, 0):i + 25]]
    return "\n".join(excerpt)[-8000:] or output[-6000:]
