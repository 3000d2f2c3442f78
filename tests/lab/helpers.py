"""Helpers for lab tests: the real CLI, ssh to a lab host, the lab's inventory, a lab of
one host of a test's own, row counts on a site's database host."""

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cmdop_install.lab import core


def cli(*args: str, check: bool = True, input: str = "") -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it (``input`` on its stdin)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cmdop_install.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cmdop-install {' '.join(args)} failed: {proc.stderr}")
    return proc


def lab_ssh(state: core.LabState, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        core.ssh_argv(state, host, command), capture_output=True, text=True, timeout=60, check=False
    )


def inventory(state: core.LabState) -> dict:
    """The lab's hosts as pyinfra groups."""
    return core.inventory_groups(state)


def one_host_lab(name: str) -> Iterator[core.LabState]:
    """A lab of one fresh host named ``name`` (for a module fixture), down again afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    try:
        cli("lab", "up", "--name", name, "--hosts", "1")
        state = core.LabState.load(name)
        assert state is not None
        yield state
    finally:
        cli("lab", "down", "--name", name, check=False)


def row_counts(state: core.LabState, tables: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Rows per table ({database: tables}), read on host1 as the postgres superuser (peer,
    local socket)."""
    counts = {}
    for db, names in tables.items():
        query = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in names)  # noqa: S608
        out = lab_ssh(state, "host1", f'sudo runuser -u postgres -- psql -d {db} -XtA -F " " '
                                      f'-c "{query}"')
        assert out.returncode == 0, out.stderr
        counts.update(line.split() for line in out.stdout.splitlines())
    return counts
