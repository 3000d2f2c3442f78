"""Where the lab keeps its files on the operator's machine.

The lab needs root (podman networks, routes, iptables), so its files live in system
locations; ``CMDOP_LAB_HOME`` moves them (tests use that to stay out of the way).
"""

import os
from pathlib import Path

IMAGE_NAME = "localhost/cmdop-lab-deb12:latest"
SUPERNET = "10.89.0.0/16"


def home() -> Path:
    return Path(os.environ.get("CMDOP_LAB_HOME", "/var/lib/cmdop-install/lab"))


def cache_dir() -> Path:
    """The cached image tar survives `lab down` (only `--purge` removes it)."""
    return Path(os.environ.get("CMDOP_LAB_CACHE", "/var/cache/cmdop-install/lab"))


def lab_dir(name: str) -> Path:
    return home() / name


def image_tar() -> Path:
    return cache_dir() / "debian12-systemd-sshd.tar"


def containers_conf() -> Path:
    return home() / "containers.conf"
