"""Helpers for driving the agent as a real process in a scratch home (tests and bench)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class AgentHome:
    root: Path
    config: Path
    credential: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(HOME=str(self.root), XDG_CONFIG_HOME=str(self.root / ".config"),
                   XDG_STATE_HOME=str(self.root / ".state"),
                   XDG_DATA_HOME=str(self.root / ".share"), SHELL="/bin/bash",
                   PYTHONUNBUFFERED="1")
        return env

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 30
            ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config",
             str(self.config), *args],
            input=stdin, capture_output=True, text=True, env=self.env(), timeout=timeout)

    def start(self, *extra: str, log: Path | None = None) -> subprocess.Popen:
        """The agent process; its output in pipes, or appended to ``log`` (a long-running
        agent whose pipes nobody reads would block once they fill)."""
        argv = [sys.executable, "-m", "cmdop_agent.cli", "--allow-root", "--config",
                str(self.config), *extra, "run", "-v"]
        if log is None:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=self.env())
        with open(log, "ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=out, env=self.env())


def write_config(root: Path, server: str, ca: Path | str, extra: str = "") -> Path:
    conf_dir = root / ".config" / "cmdop-agent"
    conf_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = conf_dir / "agent.toml"
    config.write_text(f'server = "{server}"\nca_file = "{ca}"\n{extra}')
    config.chmod(0o600)
    return config


def assert_one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A refusal as the agent must give it: non-zero, one line on stderr, no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cmdop-agent: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
