"""Runs the machine's own commands (podman, ip, iptables, debootstrap) for the lab.

Every external command of the lab goes through ``run`` so that failures become one
clear ``UserError`` line and podman always sees our ``containers.conf``.
"""

import os
import resource
import shutil
import subprocess
from collections.abc import Sequence

from cmdop_install.errors import UserError
from cmdop_install.lab import paths

DEBIAN_PACKAGES = {
    "podman": "podman",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "iptables": "iptables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "/usr/lib/podman/netavark": "netavark",
    "/usr/lib/podman/aardvark-dns": "aardvark-dns",
}


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError(
            "the lab needs root (podman networks, routes and firewall rules); "
            "run it as root or with sudo"
        )


def ensure_tools(install: bool = True) -> None:
    """Install the lab's tools on Debian; elsewhere say exactly what is missing."""
    missing = sorted({pkg for tool, pkg in DEBIAN_PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return
    if not os.path.exists("/etc/debian_version"):
        raise UserError(
            "the lab needs these tools, which are missing here: "
            + ", ".join(missing)
            + " (install them with your system's package manager)"
        )
    if not install:
        raise UserError("missing Debian packages: " + " ".join(missing))
    print(f"lab: installing {' '.join(missing)} …", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UserError(f"could not install {' '.join(missing)}: {_last_line(proc.stderr)}")


def write_containers_conf() -> None:
    """podman settings this kind of machine needs (see docs/lab.md for why each is there)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else hard
    text = (
        "# managed by cmdop-install lab, do not edit\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
        'log_driver = "k8s-file"\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        "[network]\n"
        'network_backend = "netavark"\n'
    )
    conf = paths.containers_conf()
    conf.parent.mkdir(parents=True, exist_ok=True)
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)


def podman_env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=str(paths.containers_conf()))


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    what: str | None = None,
    timeout: float | None = 600,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one command; on failure raise one line saying what we were doing and why it failed."""
    env = podman_env() if argv[0] == "podman" else None
    try:
        proc = subprocess.run(
            list(argv),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
    except FileNotFoundError as exc:
        raise UserError(f"{argv[0]} is not installed ({what or 'lab'})") from exc
    except subprocess.TimeoutExpired as exc:
        raise UserError(f"{what or argv[0]}: timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise UserError(f"{what or ' '.join(argv[:3])}: {_last_line(proc.stderr or proc.stdout)}")
    return proc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed with no message"
