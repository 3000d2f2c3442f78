"""roles/, site.yml and molecule/ pass `ansible-lint --profile production`, nothing skipped."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def test_ansible_lint_production_profile_passes_with_nothing_skipped():
    assert not list(REPO.glob(".ansible-lint*")), "no lint configuration may skip a rule"
    run = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--profile", "production", "--nocolor",
         "roles", "site.yml", "molecule"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"},
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "Profile 'production' was required, and it passed" in run.stdout + run.stderr
    assert "# noqa" not in "".join(
        p.read_text() for p in (REPO / "roles").rglob("*.yml"))
