"""Agent releases: the version this installer ships, plus wheels the operator adds.

The shipped release is built from this checkout (or comes with the bundle). Other versions
are ``cmdop_agent-<version>-py3-none-any.whl`` files in ``SITE_DIR/agent-releases/``: the
agent is standard library only, so its wheel is the whole release. Each becomes a
wheelhouse folder (wheel + ``requirements.txt``) that hosts install with ``--no-index``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cmdop_install import wheelhouse
from cmdop_install.errors import UserError

RELEASES_DIR = "agent-releases"
# on each agent host: releases/<version>/venv, and the links current and previous to them
AGENT_ROOT = "/opt/cmdop-agent"
# prints the host's current release (its version), or nothing when it has no agent yet
CURRENT_RELEASE_COMMAND = f'basename "$(readlink {AGENT_ROOT}/current)" 2>/dev/null || true'
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(?:[.+-]?[A-Za-z0-9.]+)?$")
WHEEL_RE = re.compile(r"^cmdop_agent-(?P<version>[^-]+)-py3-none-any\.whl$")


@dataclass(frozen=True)
class Release:
    version: str
    wheelhouse: dict

    def facts(self, switch: bool) -> dict:
        return {"version": self.version, "wheelhouse": self.wheelhouse, "switch": switch}


def shipped() -> Release:
    """The agent built from this installer's own source (its wheelhouse, cached)."""
    folder = wheelhouse.build("cmdop-agent")
    return Release(_version_of(folder), wheelhouse.describe(folder, "cmdop-agent"))


def find(site_dir: Path, version: str | None) -> Release:
    """``version`` (default: the shipped one) from the shipped build or the site's releases."""
    if version is not None and not VERSION_RE.match(version):
        raise UserError(f"--version {version!r}: not a version like 1.2.3")
    own = shipped()
    if version in (None, own.version):
        return own
    folder = Path(site_dir) / RELEASES_DIR
    wheels = {}
    if folder.is_dir():
        for wheel in folder.iterdir():
            match = WHEEL_RE.match(wheel.name)
            if match and VERSION_RE.match(match["version"]):
                wheels[match["version"]] = wheel
    if version not in wheels:
        have = ", ".join(sorted({own.version, *wheels}))
        raise UserError(
            f"no agent release {version}: available are {have} (put "
            f"cmdop_agent-{version}-py3-none-any.whl into {folder}/)"
        )
    folder = _wheelhouse_of(wheels[version], version)
    return Release(version, wheelhouse.describe(folder, "cmdop-agent"))


def _wheelhouse_of(wheel: Path, version: str) -> Path:
    """A cached wheelhouse folder holding just ``wheel`` (keyed by its content)."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    out = wheelhouse.cache_dir() / f"cmdop-agent-{version}-{digest[:16]}"
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copyfile(wheel, out / wheel.name)
    (out / "requirements.txt").write_text(f"cmdop-agent=={version}\n")
    (out / ".complete").write_text(digest + "\n")
    return out


def release_of(description: dict) -> Release:
    """The agent release a described wheelhouse (e.g. an offline bundle's) holds."""
    return Release(_version_of(Path(description["path"])), description)


def _version_of(folder: Path) -> str:
    for wheel in folder.glob("cmdop_agent-*.whl"):
        match = WHEEL_RE.match(wheel.name)
        if match:
            return match["version"]
    raise UserError(f"{folder}: no cmdop_agent wheel in the wheelhouse")
