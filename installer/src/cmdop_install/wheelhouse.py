"""The wheels a host installs from: ours plus every pinned dependency, for Debian 12's Python.

Hosts never reach PyPI: the control plane's and the agent's virtualenvs are made with
``pip install --no-index --find-links <wheelhouse>`` from files the installer uploads. In a
source checkout the wheels are built from the workspace (``uv build``) and the dependency
set is exactly ``uv.lock`` (``uv export``); the air-gapped bundle ships the same folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cmdop_install.errors import UserError

# Debian 12: CPython 3.11.2 on x86_64, glibc 2.36.
TARGET = [
    "--python-version",
    "3.11.2",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--platform",
    "manylinux_2_36_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "any",
    "--only-binary=:all:",
]


def repo_root() -> Path | None:
    """The workspace root when running from a checkout (it has uv.lock), else None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "uv.lock").exists() and (parent / "installer").is_dir():
            return parent
    return None


def uv_command(root: Path) -> str:
    """uv from PATH, else the private copy scripts/bootstrap.sh installs into the checkout."""
    found = shutil.which("uv") or str(root / ".cache/uv/bin/uv")
    if not Path(found).is_file():
        raise UserError("uv is not installed: run scripts/bootstrap.sh (it installs uv)")
    return found


def cache_dir() -> Path:
    return Path.home() / ".cache" / "cmdop-install" / "wheelhouse"


def build(package: str) -> Path:
    """A folder with ``package``'s wheel and its dependencies' wheels (cached by source hash)."""
    root = repo_root()
    if root is None:
        raise UserError(
            "no wheelhouse: run from a checkout of cmdop-install or deploy from a bundle"
        )
    uv = uv_command(root)
    key = _source_hash(root, package)
    out = cache_dir() / f"{package}-{key}"
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    _run([uv, "build", "--package", package, "--wheel", "-q", "-o", str(out)], root, package)
    exported = out / "requirements.lock.txt"
    _run(
        [
            uv,
            "export",
            "--package",
            package,
            "--no-hashes",
            "--no-emit-workspace",
            "--no-dev",
            "-q",
            "-o",
            str(exported),
        ],
        root,
        package,
    )
    requirements = out / "requirements.txt"
    requirements.write_text("\n".join(for_target(exported.read_text())) + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "-d",
            str(out),
            *TARGET,
            "-r",
            str(requirements),
        ],
        root,
        package,
        pip=True,
    )
    (out / ".complete").write_text(key + "\n")
    return out


def describe(folder: Path, package: str) -> dict:
    """What a host needs to install ``package`` from ``folder`` (``deploys.ops.venv_commands``)."""
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".whl")
    files.append("requirements.txt")
    distribution = package.replace("-", "_")
    (ours,) = [f for f in files if f.startswith(distribution + "-")]
    return {"key": folder.name, "path": str(folder), "files": files, "package_wheel": ours}


# The environment markers of Debian 12's interpreter: pip would evaluate them for the
# machine it runs on instead (e.g. redis needs async-timeout below Python 3.11.3).
DEBIAN12_MARKERS = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "os_name": "posix",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_version": "3.11.2",
}


def for_target(exported: str) -> list[str]:
    """Pinned requirement lines that apply on Debian 12, markers resolved and removed."""
    from packaging.markers import Marker

    wanted = []
    for line in exported.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(DEBIAN12_MARKERS):
            continue
        wanted.append(requirement.strip())
    return wanted


# made from tracked files by installs and builds, not sources: npm ci's tree (package-lock.json
# is hashed) and the browser assets the server's build hook copies out of it. Hashed, they
# would give a tree a new key after its first build, and every deploy a new release.
GENERATED = {"__pycache__", "node_modules"}
GENERATED_DIRS = {"server/src/cmdop_server/web/assets/vendor"}


def _source_hash(root: Path, package: str) -> str:
    """Changes whenever the lock or any source file of ``package`` changes."""
    h = hashlib.sha256((root / "uv.lock").read_bytes())
    folder = {"cmdop-server": "server", "cmdop-agent": "agent", "cmdop-install": "installer"}[
        package
    ]
    for f in sorted((root / folder).rglob("*")):
        if f.is_file() and not _generated(f.relative_to(root)):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _generated(path: Path) -> bool:
    return bool(GENERATED.intersection(path.parts)) or any(
        path.is_relative_to(d) for d in GENERATED_DIRS
    )


def _run(argv: list[str], cwd: Path, package: str, pip: bool = False) -> None:
    # uv trusts the machine's certificate store, as apt and pip do (a registry reached
    # through a TLS-inspecting proxy is signed by a CA only that store has; uv's built-in
    # roots refused it and a deploy run without scripts/bootstrap.sh's environment failed)
    env = {"UV_NATIVE_TLS": "1", **os.environ}
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False,
                          env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        # the error itself, not the hint uv prints after it
        reason = next((line for line in reversed(lines) if "error" in line.lower()),
                      lines[-1])
        what = "downloading dependency wheels" if pip else "building wheels"
        raise UserError(f"{what} for {package}: {reason.strip()}")
