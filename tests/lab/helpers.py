"""Helpers for lab tests: the real CLI, ssh to a lab host, the lab's inventory."""

import subprocess
import sys

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
