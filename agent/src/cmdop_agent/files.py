"""Private files: the one place that writes and checks secrets on disk (agent and cmdop).

Every secret file is written to a temp file in the same directory (mode 0600 from creation,
``O_EXCL``), fsynced, and moved into place with ``os.replace``, so a crash leaves either the
old file or the new one, never a half-written or briefly world-readable one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError


def check_private(path: Path) -> None:
    """Refuse a file that someone other than us owns or that group/others can read or write."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"refusing to use {path}: it is a symlink")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"refusing to use {path}: not a regular file")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"refusing to use {path}: owned by uid {st.st_uid}, the agent runs as uid "
            f"{os.geteuid()}"
        )
    if st.st_mode & 0o077:
        raise ConfigError(
            f"refusing to use {path}: mode {stat.S_IMODE(st.st_mode):04o} lets group/others "
            f"access it (chmod 600 {path})"
        )


def read_private(path: Path) -> bytes:
    check_private(path)
    return path.read_bytes()


def ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"refusing to use directory {path}: it must be owned by uid {os.geteuid()} and "
            "not writable by group/others"
        )


def write_private(path: Path, data: bytes) -> None:
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
