"""The site's inventory.py: a pyinfra inventory (groups of ``(name, data)`` host tuples).

pyinfra itself reads the same file on deploy; here we only load it to know which host
runs what, which addresses go into listen/bind/pg_hba and which names into certificates.
Host data keys we use: ``ssh_hostname`` (how to reach it), ``address`` (service address,
default: ssh_hostname), ``dns_names`` (extra certificate names).
"""

from __future__ import annotations

import ipaddress
import re
import runpy
from dataclasses import dataclass, field
from pathlib import Path

from cmdop_install.errors import UserError

INVENTORY_FILE = "inventory.py"
GROUPS = ("postgres", "redis", "centrifugo", "control_plane", "agents")

SKELETON = '''\
"""pyinfra inventory for this CMDOP site (read by `cmdop-install` and by pyinfra).

Each group is a list of (name, data) tuples. data keys:
  ssh_hostname  how the installer reaches the host over SSH (IP or DNS name)
  address       the address services listen on and peers use (default: ssh_hostname)
  dns_names     extra DNS names to put in the host's certificates (list, optional)
Any pyinfra connector key (ssh_user, ssh_port, ssh_key, ...) may be added as well. A
non-root ssh_user needs passwordless sudo; "_sudo": True is accepted and not needed.
A host may appear in several groups: a single-node site lists one host everywhere.
Names starting with "_" are not groups (pyinfra skips them): keep shared hosts there.
"""

_node1 = ("node1", {"ssh_hostname": "192.0.2.10", "dns_names": ["node1.internal"]})

postgres = [_node1]  # exactly one primary for now
redis = [_node1]
centrifugo = []  # hosts for Centrifugo (on control-plane hosts); only if [centrifugo] binary
control_plane = [_node1]  # nginx + gunicorn(cmdop_server)
agents = []  # fleet hosts, e.g. ("web1", {"ssh_hostname": "198.51.100.7"})
'''


@dataclass(frozen=True)
class Host:
    name: str
    ssh_hostname: str
    address: str
    dns_names: tuple[str, ...] = ()
    data: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def address_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            return False
        return True

    def san_names(self) -> tuple[list[str], list[str]]:
        """(DNS names, IP addresses) this host answers to, for certificate SANs."""
        dns, ips = [self.name], []
        for value in (self.ssh_hostname, self.address, *self.dns_names):
            try:
                ips.append(str(ipaddress.ip_address(value)))
            except ValueError:
                dns.append(value)
        return sorted(set(dns)), sorted(set(ips), key=ipaddress.ip_address)


@dataclass
class Inventory:
    groups: dict[str, list[Host]]
    other_groups: tuple[str, ...] = ()  # top-level lists we do not use (typos, own groups)

    def hosts(self) -> list[Host]:
        """Every host once, in first-seen order."""
        seen: dict[str, Host] = {}
        for group in GROUPS:
            for host in self.groups.get(group, []):
                seen.setdefault(host.name, host)
        return list(seen.values())

    def host(self, name: str) -> Host:
        for host in self.hosts():
            if host.name == name:
                return host
        raise UserError(f"{INVENTORY_FILE}: no host named {name!r} "
                        f"(known: {', '.join(h.name for h in self.hosts()) or 'none'})")

    def pyinfra_groups(self) -> dict[str, list[tuple[str, dict]]]:
        """The groups as pyinfra takes them: ``(host name, host data)`` pairs.

        ``_sudo`` (pyinfra's idiom for a non-root SSH user) is left out: our operations use
        sudo exactly where they need root, and a global one would make the SSH user's
        private upload folder root's, so that uploads into it fail.
        """
        return {
            g: [(h.name, {k: v for k, v in h.data.items() if k != "_sudo"}) for h in hosts]
            for g, hosts in self.groups.items()
        }

    def roles_of(self, name: str) -> list[str]:
        return [g for g in GROUPS if any(h.name == name for h in self.groups.get(g, []))]


_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return bool(_HOST_NAME.match(value))
    return True


def _host_from(group: str, index: int, entry) -> Host:
    where = f"{INVENTORY_FILE}: {group}[{index}]"
    if isinstance(entry, str):
        entry = (entry, {})
    if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
            and isinstance(entry[1], dict)):
        raise UserError(f"{where}: must be (name, {{\"ssh_hostname\": ...}})")
    name, data = entry
    ssh_hostname = data.get("ssh_hostname", name)
    address = data.get("address", ssh_hostname)
    dns_names = data.get("dns_names", [])
    if not _HOST_NAME.match(name):
        raise UserError(f"{where}: host name {name!r} must be a DNS label or name")
    for key, value in (("ssh_hostname", ssh_hostname), ("address", address)):
        if not isinstance(value, str) or not _is_address(value):
            raise UserError(f"{where}: {key} must be an IP address or DNS name "
                            f"(e.g. \"10.0.0.5\")")
    if not isinstance(dns_names, list | tuple) or not all(
            isinstance(n, str) and _HOST_NAME.match(n) for n in dns_names):
        raise UserError(f"{where}: dns_names must be a list of DNS names")
    return Host(name, ssh_hostname, address, tuple(dns_names), dict(data))


def parse_inventory(namespace: dict) -> Inventory:
    groups: dict[str, list[Host]] = {}
    for group in GROUPS:
        entries = namespace.get(group, [])
        if not isinstance(entries, list | tuple):
            raise UserError(f"{INVENTORY_FILE}: {group}: must be a list of (name, data) tuples")
        groups[group] = [_host_from(group, i, e) for i, e in enumerate(entries)]
    others = tuple(sorted(k for k, v in namespace.items() if isinstance(v, list)
                          and not k.startswith("_") and k not in GROUPS))
    return Inventory(groups, others)


def load_inventory(site_dir: Path) -> Inventory:
    """Run inventory.py and read its groups; any failure is one line naming the cause."""
    path = Path(site_dir) / INVENTORY_FILE
    if not path.is_file():
        raise UserError(f"{path}: no such file (run `cmdop-install init {site_dir}`)")
    try:
        namespace = runpy.run_path(str(path), run_name="cmdop_inventory")
    except SyntaxError as exc:
        raise UserError(f"{INVENTORY_FILE}:{exc.lineno}: does not import: syntax error "
                        f"({exc.msg})") from None
    except BaseException as exc:  # noqa: BLE001 - the operator's code; report, never trace
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = _failing_line(exc, path)
        raise UserError(f"{INVENTORY_FILE}:{line}: does not import: {type(exc).__name__} "
                        "(run `python inventory.py` to see the full error)") from None
    return parse_inventory(namespace)


def _failing_line(exc: BaseException, path: Path) -> str:
    tb = exc.__traceback__
    line = "?"
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = str(tb.tb_lineno)
        tb = tb.tb_next
    return line
