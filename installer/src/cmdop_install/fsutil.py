"""Atomic file writes: temp file in the same folder, exact mode from the start, os.replace.

A reader never sees a half-written file, and a secret never exists on disk with a looser
mode than the one asked for (the temp file is created 0600 and chmod-ed before writing).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cmdop_install.errors import UserError


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot write here ({exc.strerror}; "
                        "check the folder exists and is writable)") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None


def make_dir(path: Path, mode: int = 0o700) -> None:
    try:
        Path(path).mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot create folder ({exc.strerror}; "
                        "choose a writable location)") from None
