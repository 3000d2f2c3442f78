"""The real cmdop-agent process enrolled in a fresh workspace of the real control plane.

``RealAgent`` holds the workspace, its owner (an API key: the operator), the agent's home
and process. The fixtures in conftest.py build one per test; everything the test does to
the session goes through the control plane's user API (tests/support/control_plane.py).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from cmdop_server.identity import actions as identity_actions
from cmdop_server.machines import actions as machine_actions
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Session, Status

from tests.server_sessions.helpers import add_member, make_workspace, owner_membership
from tests.support.control_plane import SessionOutput, UserApi, until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_home import AgentHome, write_config  # noqa: E402

__all__ = ["AgentHome", "RealAgent", "new_join_token", "write_config"]


def new_join_token(ws, owner, ttl: int = 600, usage_limit: int = 1) -> str:
    return machine_actions.do_create_join_token(owner_membership(ws, owner), "test", ttl,
                                                usage_limit)[1]


@dataclass
class RealAgent:
    server: str
    ca: Path
    root: Path
    config_extra: str = ""
    proc: subprocess.Popen | None = None
    machine: Machine | None = None
    _apis: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ws, self.owner = make_workspace()
        self.key = identity_actions.do_create_api_key(owner_membership(self.ws, self.owner),
                                                      "operator")[1]
        config = write_config(self.root, self.server, self.ca, self.config_extra)
        self.home = AgentHome(self.root, config, config.parent / "credential.json")
        self.log = self.root / "agent.log"

    @cached_property
    def api(self) -> UserApi:
        """The owner's API: the operator of every session it opens."""
        return self.user_api(self.key)

    def user_api(self, key: str) -> UserApi:
        api = UserApi(self.server, self.ca, key, self.ws.slug)
        self._apis.append(api)
        return api

    def member(self, role: str = "member"):
        """Another member of the workspace and their API (to invite as an observer)."""
        user = add_member(self.ws, role)
        membership = owner_membership(self.ws, user)
        return user, self.user_api(identity_actions.do_create_api_key(membership, "m")[1])

    def enroll(self, token: str | None = None) -> subprocess.CompletedProcess:
        return self.home.cli("enroll", "--token", token or new_join_token(self.ws, self.owner))

    def start(self) -> Machine:
        """Enroll if needed, start ``cmdop-agent run``, return the machine once it has sent
        its first heartbeat."""
        if not self.home.credential.exists():
            enrolled = self.enroll()
            assert enrolled.returncode == 0, enrolled.stderr
        self.proc = self.home.start(log=self.log)
        self.machine = until(lambda: self._alive() and Machine.objects.in_workspace(self.ws)
                             .filter(last_seen_at__isnull=False).first(),
                             what=f"the agent's first heartbeat; log:\n{self.log_text()}")
        return self.machine

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the agent exited with {self.proc.returncode}:\n"
                                 f"{self.log_text()}")
        return True

    def log_text(self, tail: int | None = 3000) -> str:
        """The agent's log (its last ``tail`` characters; all of it with None)."""
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace")
            return text[-tail:] if tail else text
        return ""

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; the exit code (SIGKILL after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        for api in self._apis:
            api.close()

    def session(self, pk_or_id: str) -> Session:
        return Session.objects.in_workspace(self.ws).get(public_id=pk_or_id)

    def open_session(self, cols: int = 80, rows: int = 24) -> tuple[str, SessionOutput]:
        """A PTY session opened by the owner, once the agent reports it open; with a reader
        of its output on a connection of its own."""
        assert self.machine is not None, "start() the agent first"
        sid = self.api.open_session(self.machine.public_id, cols, rows)
        until(lambda: self._alive() and self.session(sid).status == Status.CONNECTED,
              what="the PTY to open")
        return sid, SessionOutput(self.user_api(self.key), sid)
