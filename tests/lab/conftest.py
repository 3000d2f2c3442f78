"""One lab per test run, shared by every lab test (session scope), torn down at the end."""

import os
from collections.abc import Iterator

import pytest
from cmdop_install.lab import core

from tests.lab.helpers import cli

LAB = "citest"


@pytest.fixture(scope="session")
def lab() -> Iterator[core.LabState]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    cli("lab", "up", "--name", LAB, "--hosts", "3", "--airgapped", "air1")
    state = core.LabState.load(LAB)
    assert state is not None
    yield state
    cli("lab", "down", "--name", LAB)
