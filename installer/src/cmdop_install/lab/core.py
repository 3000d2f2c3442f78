"""`lab up / status / ssh / down`: a disposable fleet of Debian 12 hosts on this machine.

Each lab has a name and a folder (``paths.lab_dir``) holding its state, its SSH key, the
hosts' known keys (read over podman, a trusted channel, never trust-on-first-use), an SSH
config and a pyinfra ``inventory.py``. Every step compares before it acts, so a second
``lab up`` with the same arguments changes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cmdop_install.errors import UserError
from cmdop_install.lab import image, network, paths, system

MAX_HOSTS = 50
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
FIRST_HOST_OCTET = 11
READY_TIMEOUT = 180.0


@dataclass
class LabHost:
    name: str  # inventory / ssh name, e.g. host1
    container: str  # podman container name, e.g. cmdop-host1
    ip: str
    airgapped: bool = False


@dataclass
class LabState:
    name: str
    index: int
    subnet: str
    air_subnet: str
    hosts: list[LabHost] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return paths.lab_dir(self.name)

    def net_name(self, airgapped: bool) -> str:
        return f"{self.name}-air" if airgapped else f"{self.name}-net"

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if name in (h.name, h.container, h.ip):
                return h
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise UserError(f"lab {self.name!r} has no host {name!r} (hosts: {known})")

    def save(self) -> None:
        _write_if_changed(self.dir / "state.json", json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, name: str) -> LabState | None:
        f = paths.lab_dir(name) / "state.json"
        if not f.exists():
            return None
        raw = json.loads(f.read_text())
        raw["hosts"] = [LabHost(**h) for h in raw["hosts"]]
        return cls(**raw)


# ---------------------------------------------------------------- validation


def validate_request(name: str, hosts: int, airgapped: tuple[str, ...]) -> None:
    """Everything about the request is checked before anything is made."""
    if not NAME_RE.match(name):
        raise UserError(
            f"--name {name!r}: use 1-20 lowercase letters, digits or '-', starting with a letter"
        )
    if not 1 <= hosts <= MAX_HOSTS:
        raise UserError(f"--hosts {hosts}: must be between 1 and {MAX_HOSTS}")
    seen = set()
    for air in airgapped:
        if not NAME_RE.match(air):
            raise UserError(
                f"--airgapped {air!r}: use lowercase letters, digits or '-', starting with a letter"
            )
        if re.fullmatch(r"host\d+", air):
            raise UserError(
                f"--airgapped {air!r}: hostN names are taken by the normal hosts; pick another name"
            )
        if air in seen:
            raise UserError(f"--airgapped {air!r} is given twice")
        seen.add(air)
    if len(airgapped) > MAX_HOSTS:
        raise UserError(f"--airgapped: at most {MAX_HOSTS} air-gapped hosts")


def wanted_hosts(state: LabState, hosts: int, airgapped: tuple[str, ...]) -> list[LabHost]:
    def ip(subnet: str, i: int) -> str:
        return subnet.rsplit(".", 1)[0] + f".{FIRST_HOST_OCTET + i}"

    normal = [
        LabHost(f"host{i + 1}", f"{state.name}-host{i + 1}", ip(state.subnet, i))
        for i in range(hosts)
    ]
    air = [
        LabHost(a, f"{state.name}-{a}", ip(state.air_subnet, i), True)
        for i, a in enumerate(airgapped)
    ]
    return normal + air


# ---------------------------------------------------------------- up


def up(name: str, hosts: int, airgapped: tuple[str, ...]) -> LabState:
    validate_request(name, hosts, airgapped)
    system.require_root()
    with _lock():
        system.ensure_tools()
        system.write_containers_conf()
        state = LabState.load(name) or _new_state(name)
        wanted = wanted_hosts(state, hosts, airgapped)
        extra = [h.name for h in state.hosts if h.name not in {w.name for w in wanted}]
        if extra:
            raise UserError(
                f"lab {name!r} already has {', '.join(extra)}, "
                "which this request does not include; "
                f"run `cmdop-install lab down --name {name}` first, or ask for them again"
            )
        changes = []
        if image.ensure_image():
            changes.append("image")
        # Safety first: nothing of the lab may start before the blackhole route exists.
        if network.ensure_blackhole():
            changes.append("blackhole route")
        state.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state.dir, 0o700)
        state.hosts = wanted
        state.save()
        if _ensure_key(state):
            changes.append("ssh key")
        changes += _ensure_networks(state)
        changes += _ensure_hosts(state)
        # written before waiting: the readiness probe goes through this ssh_config
        if _write_access_files(state):
            changes.append("inventory and ssh config")
        _check_routes(state)
        _wait_ready(state)
        if changes:
            print(f"lab {name}: made {', '.join(changes)}")
        else:
            print(f"lab {name}: up to date, nothing changed")
        return state


def _new_state(name: str) -> LabState:
    used = set()
    if paths.home().exists():
        for f in paths.home().glob("*/state.json"):
            used.add(json.loads(f.read_text())["index"])
    index = next(i for i in range(120) if i not in used)
    third = 10 + 2 * index
    return LabState(name, index, f"10.89.{third}.0/24", f"10.89.{third + 1}.0/24")


def _ensure_key(state: LabState) -> bool:
    key = state.dir / "id_ed25519"
    changed = False
    if not key.exists():
        system.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"cmdop-lab-{state.name}",
                "-f",
                str(key),
            ],
            what="making the lab's ssh key",
        )
        changed = True
    pub = (state.dir / "id_ed25519.pub").read_text()
    _write_if_changed(state.dir / "authorized_keys", pub, mode=0o644)
    return changed


def _ensure_networks(state: LabState) -> list[str]:
    made = []
    for air in sorted({h.airgapped for h in state.hosts}):
        net = state.net_name(air)
        subnet = state.air_subnet if air else state.subnet
        if air and network.ensure_airgap(state.name, subnet):
            made.append(f"air-gap rules for {subnet}")
        if system.run(["podman", "network", "exists", net], check=False).returncode == 0:
            continue
        argv = [
            "podman",
            "network",
            "create",
            "--subnet",
            subnet,
            "--label",
            f"cmdop-lab={state.name}",
        ]
        # --internal: no route out. Never --disable-dns: netavark would then give the bridge
        # no gateway address and SSH to the host would leave the machine by the default route.
        system.run([*argv, *(["--internal"] if air else []), net], what=f"creating network {net}")
        made.append(f"network {net}")
    return made


def _ensure_hosts(state: LabState) -> list[str]:
    made = []
    running = _container_states(state)
    for h in state.hosts:
        status = running.get(h.container)
        if status == "running":
            continue
        if status is not None:
            system.run(["podman", "start", h.container], what=f"starting {h.name}")
            made.append(f"started {h.name}")
            continue
        argv = [
            "podman",
            "run",
            "-d",
            "--name",
            h.container,
            "--hostname",
            h.name,
            "--network",
            state.net_name(h.airgapped),
            "--ip",
            h.ip,
            "--systemd=always",
            # like a real host's root: it may set its own firewall (its own netns only)
            "--cap-add",
            "NET_ADMIN",
            "--label",
            f"cmdop-lab={state.name}",
            "--mount",
            f"type=bind,src={state.dir / 'authorized_keys'},dst=/etc/ssh/lab_authorized_keys,ro",
        ]
        if h.airgapped:
            argv += ["--dns", "127.0.0.1"]
        system.run([*argv, paths.IMAGE_NAME, "/sbin/init"], what=f"starting host {h.name}")
        made.append(f"host {h.name}")
    return made


def _container_states(state: LabState) -> dict[str, str]:
    out = system.run(
        ["podman", "ps", "-a", "--filter", f"label=cmdop-lab={state.name}", "--format", "json"],
        what="listing lab hosts",
    )
    return {c["Names"][0]: c["State"] for c in json.loads(out.stdout or "[]")}


def _check_routes(state: LabState) -> None:
    """Fail at once, in one line, when this machine cannot reach a host it just made (rather
    than after the readiness timeout): every host's address must route through its bridge."""
    bridges = {
        air: network.bridge_of(state.net_name(air)) for air in {h.airgapped for h in state.hosts}
    }
    for h in state.hosts:
        via = network.route_device(h.ip)
        if via != bridges[h.airgapped]:
            backend = system.run(
                ["podman", "info", "--format", "{{.Host.NetworkBackend}}"], check=False
            ).stdout.strip()
            raise UserError(
                f"lab {state.name}: this machine cannot reach {h.name} ({h.ip}): "
                f"its route goes {'to ' + via if via else 'nowhere'} instead of bridge "
                f"{bridges[h.airgapped] or '(none)'} of {state.net_name(h.airgapped)} "
                f"(podman network backend: {backend or 'unknown'}; the lab needs netavark)"
            )


def _wait_ready(state: LabState) -> None:
    """Each host: its host key over podman (trusted), then SSH + `systemctl is-system-running`."""
    deadline = time.monotonic() + READY_TIMEOUT
    for h in state.hosts:
        while True:
            key = system.run(
                ["podman", "exec", h.container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
                check=False,
            )
            if key.returncode == 0 and key.stdout.startswith("ssh-ed25519"):
                break
            _give_up_at(deadline, h, "its ssh host key never appeared")
            time.sleep(0.3)
        _known_host(state, h, key.stdout.split()[1])
    for h in state.hosts:
        while True:
            probe = system.run(
                ssh_argv(state, h.name, "systemctl", "is-system-running", "--wait"),
                check=False,
                timeout=60,
            )
            status = probe.stdout.strip()
            if status == "running":
                break
            if status == "degraded":
                failed = system.run(
                    ssh_argv(state, h.name, "systemctl", "--failed", "--no-legend"), check=False
                )
                raise UserError(
                    f"{h.name}: systemd is degraded: {failed.stdout.strip() or 'see journalctl'}"
                )
            _give_up_at(deadline, h, probe.stderr.strip() or status or "no answer over ssh")
            time.sleep(0.3)


def _give_up_at(deadline: float, h: LabHost, why: str) -> None:
    if time.monotonic() > deadline:
        raise UserError(f"{h.name} ({h.ip}) did not come up in {READY_TIMEOUT:.0f}s: {why}")


def _known_host(state: LabState, h: LabHost, key_b64: str) -> None:
    f = state.dir / "known_hosts"
    lines = [
        ln
        for ln in (f.read_text().splitlines() if f.exists() else [])
        if not ln.startswith(h.ip + " ")
    ]
    _write_if_changed(
        f, "\n".join(sorted([*lines, f"{h.ip} ssh-ed25519 {key_b64}"])) + "\n", mode=0o644
    )


# ---------------------------------------------------------------- access files


def ssh_config_text(state: LabState) -> str:
    blocks = [f"# managed by cmdop-install lab {state.name!r}; `lab up` rewrites it\n"]
    for h in state.hosts:
        blocks.append(
            f"Host {h.name}\n"
            f"  HostName {h.ip}\n"
            "  User deploy\n"
            f"  IdentityFile {state.dir / 'id_ed25519'}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {state.dir / 'known_hosts'}\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 5\n"
            "  LogLevel ERROR\n"
        )
    return "\n".join(blocks)


def ssh_data(state: LabState) -> dict:
    """pyinfra connection data of every lab host: the deploy user, the lab key, pinned keys."""
    return {
        "ssh_user": "deploy",
        "ssh_key": str(state.dir / "id_ed25519"),
        "ssh_known_hosts_file": str(state.dir / "known_hosts"),
        "ssh_strict_host_key_checking": "yes",
    }


def inventory_groups(state: LabState) -> dict[str, list[tuple[str, dict]]]:
    """The lab as pyinfra groups: `lab` (normal hosts) and `airgapped`."""

    def group(air: bool) -> list[tuple[str, dict]]:
        return [
            (h.name, {"ssh_hostname": h.ip, **ssh_data(state), "_sudo": True})
            for h in state.hosts
            if h.airgapped == air
        ]

    return {"lab": group(False), "airgapped": group(True)}


def inventory_text(state: LabState) -> str:
    """inventory.py for pyinfra's own CLI: the groups of ``inventory_groups``."""
    rows = {
        name: "".join(
            f'    ("{h}", {{"ssh_hostname": "{d["ssh_hostname"]}", **_SSH}}),\n' for h, d in hosts
        )
        for name, hosts in inventory_groups(state).items()
    }
    return (
        f"# managed by cmdop-install lab {state.name!r}; `lab up` rewrites it.\n"
        "# pyinfra inventory: every top-level list is a group.\n"
        f"_SSH = {{**{ssh_data(state)!r}, '_sudo': True}}\n\n"
        + "".join(f"{name} = [\n{body}]\n" for name, body in rows.items())
    )


def site_inventory_text(state: LabState, control_plane: str, agents: list[str]) -> str:
    """A site inventory.py (cmdop-install's groups) over this lab's hosts.

    ``control_plane`` carries Postgres, Redis and the control plane (a single-node site);
    ``agents`` are the fleet.
    """

    def entry(name: str) -> str:
        return f'("{name}", {{"ssh_hostname": "{state.host(name).ip}", **_SSH}})'

    fleet = "".join(f"    {entry(a)},\n" for a in agents)
    return (
        f"# cmdop-install site inventory over lab {state.name!r} (written by the demo)\n"
        f"_SSH = {ssh_data(state)!r}\n"
        f"_CONTROL = {entry(control_plane)}\n\n"
        "postgres = [_CONTROL]\nredis = [_CONTROL]\ncentrifugo = []\ncontrol_plane = [_CONTROL]\n"
        f"agents = [\n{fleet}]\n"
    )


def _write_access_files(state: LabState) -> bool:
    a = _write_if_changed(state.dir / "ssh_config", ssh_config_text(state), mode=0o600)
    b = _write_if_changed(state.dir / "inventory.py", inventory_text(state), mode=0o600)
    return a or b


def ssh_argv(state: LabState, host: str, *command: str) -> list[str]:
    return ["ssh", "-F", str(state.dir / "ssh_config"), state.host(host).name, *command]


# ---------------------------------------------------------------- status / down


def require_state(name: str) -> LabState:
    if not NAME_RE.match(name):
        raise UserError(f"--name {name!r}: not a lab name")
    state = LabState.load(name)
    if state is None:
        raise UserError(
            f"there is no lab {name!r} (start one with `cmdop-install lab up --name {name}`)"
        )
    return state


def status(name: str) -> dict:
    system.require_root()
    state = require_state(name)
    live = _container_states(state)
    return {
        "name": state.name,
        "dir": str(state.dir),
        "inventory": str(state.dir / "inventory.py"),
        "ssh_config": str(state.dir / "ssh_config"),
        "hosts": [{**asdict(h), "state": live.get(h.container, "missing")} for h in state.hosts],
    }


def down(name: str, purge: bool = False) -> list[str]:
    if not NAME_RE.match(name):
        raise UserError(f"--name {name!r}: not a lab name")
    system.require_root()
    removed: list[str] = []
    with _lock():
        state = LabState.load(name)
        if state is not None:
            containers = system.run(
                ["podman", "ps", "-a", "-q", "--filter", f"label=cmdop-lab={name}"],
                what="listing lab hosts",
            ).stdout.split()
            if containers:
                system.run(
                    ["podman", "rm", "-f", "-t", "10", *containers], what="removing lab hosts"
                )
                removed.append(f"{len(containers)} host(s)")
            for air in (False, True):
                net = state.net_name(air)
                if system.run(["podman", "network", "exists", net], check=False).returncode == 0:
                    system.run(
                        ["podman", "network", "rm", "-f", net], what=f"removing network {net}"
                    )
                    removed.append(f"network {net}")
            network.remove_airgap(name, state.air_subnet)
            _remove_tree(state.dir)
            removed.append(f"state {state.dir}")
        removed += _release_safety_route()
        if purge:
            image.remove_image()
            removed.append("cached image")
    return removed


def release_safety_route() -> list[str]:
    """Remove the lab range's blackhole route if nothing uses the range any more, as
    ``down`` does; for what added it outside a lab (the molecule test's scenario)."""
    with _lock():
        return _release_safety_route()


def _release_safety_route() -> list[str]:
    # the safety route stays while anything still uses the lab range: another lab, or a
    # network made outside `lab up` (molecule's scenarios take their subnets from it too)
    if (
        not any(paths.home().glob("*/state.json"))
        and not network.networks_in_supernet()
        and network.blackhole_present()
    ):
        network.remove_blackhole()
        return ["blackhole route"]
    return []


def _remove_tree(d: Path) -> None:
    for p in sorted(d.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    d.rmdir()


# ---------------------------------------------------------------- helpers


@contextmanager
def _lock() -> Iterator[None]:
    paths.home().mkdir(parents=True, exist_ok=True)
    with open(paths.home() / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _write_if_changed(path: Path, text: str, mode: int = 0o600) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def map_site_domain(groups: dict, domain: str, address: str) -> None:
    """Make ``domain`` resolve to ``address`` on every lab host of ``groups`` (/etc/hosts)."""
    from cmdop_install.runner import run_deploy

    result = run_deploy(
        groups,
        "cmdop_install.deploys.lab_probe:lab_dns",
        data={"cmdop_lab_dns": {"name": domain, "address": address}},
    )
    if result.failed:
        raise UserError(f"could not map {domain} on {', '.join(result.failed)}")
