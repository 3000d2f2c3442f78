"""The lab's routes and firewall rules: lab traffic never leaves this machine.

* A blackhole route for the whole lab supernet exists before any host starts, so a packet
  to a lab address whose bridge is down is dropped here instead of following the default route.
* An air-gapped network is podman ``--internal`` plus FORWARD drops in both directions,
  tagged with a comment so ``lab down`` removes exactly what it added.
"""

import ipaddress
import json

from cmdop_install.lab import paths, system


def blackhole_present() -> bool:
    out = system.run(["ip", "route", "show", "type", "blackhole", paths.SUPERNET], check=False)
    return paths.SUPERNET.split("/")[0] in out.stdout


def ensure_blackhole() -> bool:
    if blackhole_present():
        return False
    system.run(
        ["ip", "route", "replace", "blackhole", paths.SUPERNET],
        what="adding the lab's safety route",
    )
    return True


def remove_blackhole() -> None:
    if blackhole_present():
        system.run(
            ["ip", "route", "del", "blackhole", paths.SUPERNET],
            what="removing the lab's safety route",
        )


def _drop_rules(lab: str, subnet: str) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", f"cmdop-lab:{lab}", "-j", "DROP"]
    return [["FORWARD", "-s", subnet, *tag], ["FORWARD", "-d", subnet, *tag]]


def ensure_airgap(lab: str, subnet: str) -> bool:
    changed = False
    for rule in _drop_rules(lab, subnet):
        if system.run(["iptables", "-C", *rule], check=False).returncode != 0:
            system.run(["iptables", "-I", *rule], what="adding an air-gap firewall rule")
            changed = True
    return changed


def remove_airgap(lab: str, subnet: str) -> None:
    for rule in _drop_rules(lab, subnet):
        while system.run(["iptables", "-C", *rule], check=False).returncode == 0:
            system.run(["iptables", "-D", *rule], what="removing an air-gap firewall rule")


def gateway(subnet: str) -> str:
    """podman gives a bridge the first address of its subnet."""
    base = subnet.split("/")[0].rsplit(".", 1)[0]
    return f"{base}.1"


def route_device(address: str) -> str | None:
    """The interface this machine would send a packet to ``address`` through (None: no route,
    e.g. the lab's blackhole answers because no bridge carries the address's subnet)."""
    out = system.run(["ip", "-4", "route", "get", address], check=False)
    words = out.stdout.split()
    if out.returncode != 0 or words[:1] == ["blackhole"] or "dev" not in words:
        return None
    return words[words.index("dev") + 1]


def bridge_of(net: str) -> str:
    out = system.run(
        ["podman", "network", "inspect", net, "--format", "{{.NetworkInterface}}"],
        what=f"reading network {net}",
    )
    return out.stdout.strip()


def networks_in_supernet() -> list[str]:
    """podman networks with a subnet inside the lab's range, whoever made them."""
    out = system.run(["podman", "network", "ls", "--format", "json"], check=False)
    if out.returncode != 0:
        return []
    supernet = ipaddress.IPv4Network(paths.SUPERNET)
    found = []
    for net in json.loads(out.stdout or "[]"):
        for sub in net.get("subnets") or []:
            subnet = ipaddress.ip_network(sub.get("subnet", "0.0.0.0/32"), strict=False)
            if isinstance(subnet, ipaddress.IPv4Network) and subnet.subnet_of(supernet):
                found.append(net.get("name", "?"))
    return found
