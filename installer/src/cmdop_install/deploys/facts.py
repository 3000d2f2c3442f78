"""What our operations read from a host, as typed pyinfra facts (one remote command each).

A fact never fails a host: its command ends in ``|| true``, so a program that is missing or
a path that does not exist yet reads as the fact's default. Each ``process`` turns the
command's output lines into the value the operations compare with what they want; the
operation cases under tests/installer/ops/ feed these same output lines.
"""

from __future__ import annotations

import shlex
from typing import NamedTuple

from pyinfra.api import FactBase

QUIET = "2>/dev/null || true"


def quoted(paths: list[str]) -> str:
    return " ".join(shlex.quote(p) for p in paths)


# one line per existing path: kind, sha256, mode, user, group, path (the path last: it may
# hold spaces)
PATH_STATE = (
    """if [ -L "$p" ]; then printf 'other - - - - %s\\n' "$p"; """
    """elif [ -f "$p" ]; then printf 'file %s %s %s %s %s\\n' """
    """"$(sha256sum < "$p" | cut -c1-64)" $(stat -c '%a %U %G' "$p") "$p"; """
    """elif [ -d "$p" ]; then printf 'dir - %s %s %s %s\\n' $(stat -c '%a %U %G' "$p") "$p"; """
    """elif [ -e "$p" ]; then printf 'other - - - - %s\\n' "$p"; fi"""
)


class PathState(NamedTuple):
    kind: str  # "file", "dir" or "other" (a link, a device...)
    sha256: str  # "-" unless a file
    mode: str  # octal, as stat prints it ("640", "2750"); "-" for other
    user: str
    group: str


class PathStates(FactBase[dict[str, PathState]]):
    """path -> its PathState, for each of ``paths`` that exists.

    Callers pass the same list for a whole host (every rendered file and its folder), so the
    runner's fact cache answers the next operation without asking the host again, until
    something on the host changes.
    """

    def command(self, paths: list[str]) -> str:
        return f"for p in {quoted(paths)}; do {PATH_STATE}; done {QUIET}"

    @staticmethod
    def default() -> dict[str, PathState]:
        return {}

    def process(self, output: list[str]) -> dict[str, PathState]:
        found = {}
        for line in output:
            kind, sha256, mode, user, group, path = line.split(" ", 5)
            found[path] = PathState(kind, sha256, mode, user, group)
        return found


class ExistingPaths(FactBase[list[str]]):
    """Those of ``paths`` that exist (a dangling link counts)."""

    def command(self, paths: list[str]) -> str:
        exists = 'if [ -e "$p" ] || [ -L "$p" ]; then echo "$p"; fi'
        return f"for p in {quoted(paths)}; do {exists}; done {QUIET}"

    @staticmethod
    def default() -> list[str]:
        return []

    def process(self, output: list[str]) -> list[str]:
        return [line for line in output if line]


class LinkTarget(FactBase[str]):
    """Where the symbolic link ``path`` points; "" when it is not a link."""

    def command(self, path: str) -> str:
        return f"readlink {shlex.quote(path)} {QUIET}"

    @staticmethod
    def default() -> str:
        return ""

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


class WheelhouseKey(FactBase[str]):
    """The wheelhouse a virtualenv was built from (its ``.cmdop-wheelhouse`` marker); ""
    when there is no such virtualenv."""

    def command(self, venv: str) -> str:
        return f"cat {shlex.quote(venv + '/.cmdop-wheelhouse')} {QUIET}"

    @staticmethod
    def default() -> str:
        return ""

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


class DistributionVersion(FactBase[str]):
    """The version of ``distribution`` installed in virtualenv ``venv``; "" if none."""

    def command(self, venv: str, distribution: str) -> str:
        return (f"ls -d {shlex.quote(venv)}/lib/python3*/site-packages/{shlex.quote(distribution)}-"
                f"*.dist-info {QUIET}")

    @staticmethod
    def default() -> str:
        return ""

    def process(self, output: list[str]) -> str:
        if not output:
            return ""
        return output[0].strip().rsplit("/", 1)[-1].removesuffix(".dist-info").split("-", 1)[-1]


class UnitActive(FactBase[bool]):
    """Whether systemd unit ``unit`` is active (``systemctl is-active``)."""

    def command(self, unit: str) -> str:
        return f"systemctl is-active {shlex.quote(unit)} {QUIET}"

    @staticmethod
    def default() -> bool:
        return False

    def process(self, output: list[str]) -> bool:
        return output == ["active"]


class IsExecutable(FactBase[bool]):
    def command(self, path: str) -> str:
        return f"test -x {shlex.quote(path)} && echo yes {QUIET}"

    @staticmethod
    def default() -> bool:
        return False

    def process(self, output: list[str]) -> bool:
        return output == ["yes"]


class IsNonEmptyFile(FactBase[bool]):
    def command(self, path: str) -> str:
        return f"test -s {shlex.quote(path)} && echo yes {QUIET}"

    @staticmethod
    def default() -> bool:
        return False

    def process(self, output: list[str]) -> bool:
        return output == ["yes"]


class PostgresValue(FactBase[str]):
    """The value of one SQL query, as the postgres superuser (unaligned, tuples only); ""
    when PostgreSQL is not running or not installed yet."""

    def command(self, sql: str) -> str:
        return f"runuser -u postgres -- psql -X -tA -c {shlex.quote(sql)} {QUIET}"

    @staticmethod
    def default() -> str:
        return ""

    def process(self, output: list[str]) -> str:
        return "\n".join(output).strip()


class InstallerState(FactBase[dict[str, str]]):
    """The control plane's ``installer_state`` management command (run by ``command``):
    ``key=value`` words, e.g. ``default=current audit=pending owner=present``; {} when the
    control plane is not installed yet."""

    def command(self, command: str) -> str:
        return f"{command} {QUIET}"

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def process(self, output: list[str]) -> dict[str, str]:
        words = " ".join(output).split()
        return dict(word.split("=", 1) for word in words if "=" in word)
