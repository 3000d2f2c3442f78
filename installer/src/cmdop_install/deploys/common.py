"""Shared deploy steps: put rendered files in place with their owner and mode from the first byte.

pyinfra uploads with ``_sudo`` go to a temp file as the SSH user, are copied into place by
root and chmodded afterwards. So a secret (1) travels through a 0700 folder of the SSH
user's (``_temp_dir``), never the shared /tmp, and (2) lands in a file created beforehand,
empty, with its final owner and mode: ``cp`` onto an existing file keeps both.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from pyinfra import host
from pyinfra.facts.server import Home
from pyinfra.operations import files

from cmdop_install.deploys.ops import folder, sync_files

TMP_NAME = ".cmdop-install-tmp"


def payload() -> Path:
    """This host's folder of rendered files on the operator's machine (0700, per run)."""
    return Path(host.data.cmdop_payload) / host.name


def manifest() -> list[dict]:
    return json.loads((payload() / "manifest.json").read_text())


def extra(name: str):
    return json.loads((payload() / f"{name}.json").read_text())


def temp_dir() -> str:
    """A 0700 folder of the SSH user's for uploads (made once per host by ``prepare``)."""
    return str(PurePosixPath(host.get_fact(Home) or "/root") / TMP_NAME)


def prepare() -> None:
    files.directory(name="Private upload folder", path=temp_dir(), mode="700", present=True)


def put_files(
    folder_path: str,
    directories: dict[str, tuple[str, str, str]] | None = None,
    names: tuple[str, ...] | None = None,
) -> list:
    """Converge the rendered files directly in ``folder_path`` (only ``names``, if given).

    ``directories`` maps a folder to (owner, group, mode) for folders we own. One operation
    compares every file with a single remote command (content hash, mode, owner) and sends
    only what differs. Returns the operations, for ``any_changed``.
    """
    known = known_paths()
    ops = [
        folder(
            name=f"Folder {path}",
            path=path,
            owner=owner,
            group=group,
            mode=mode,
            known=known,
            _sudo=True,
        )
        for path, (owner, group, mode) in (directories or {}).items()
    ]
    wanted = []
    for entry in manifest():
        path = PurePosixPath(entry["path"])
        if str(path.parent) == folder_path and (names is None or path.name in names):
            wanted.append({**entry, "src": str(payload() / entry["src"])})
    if wanted:
        ops.append(
            sync_files(
                name=f"Files in {folder_path}",
                files=wanted,
                temp_dir=temp_dir(),
                known=known,
                _sudo=True,
            )
        )
    return ops


def known_paths() -> list[str]:
    """Every rendered file of this host and its folder: one listing answers them all."""
    paths = [entry["path"] for entry in manifest()]
    return sorted({*paths, *(str(PurePosixPath(p).parent) for p in paths)})


def any_changed(ops):
    """A callable for ``_if=`` or our operations: did (or, while planning, will) any op change?"""

    def check() -> bool:
        return any(op.did_change() if op.is_complete() else op.will_change for op in ops)

    return check
