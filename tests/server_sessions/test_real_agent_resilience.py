"""kill -9 of the control plane (gunicorn master and workers) and of Redis in the middle of
a session: the real agent reconnects within its backoff bound, the session goes on, output
made during the outage arrives once, and no input runs twice.

Every input line appends a unique marker to a file in the agent's home; the file is the
record of what the shell actually ran. The agents here use ``reconnect_max_delay = 1``; the
bound is also checked where the agent states it, in its log ("retrying in N s").
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest
from cmdop_server.sessions.models import Status

from tests.support.control_plane import ControlPlane, until
from tests.support.services import RedisServer

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

CAP = 1.0  # the agents' reconnect_max_delay in these tests
RETRY = re.compile(r"cmdop-agent: (\w+): .*; retrying in (\d+(?:\.\d+)?)s")
# After the control plane is back, the agent's next attempt comes within CAP; the rest is
# room for a loaded two-core machine (a TLS handshake, Django, the shell), not for backoff.
RECONNECT_SLACK = 10.0


class Typist:
    """Types marker lines into a session and remembers those the control plane accepted."""

    def __init__(self, agent, session_id: str) -> None:
        self.agent, self.sid = agent, session_id
        self.log = agent.root / "typed.log"
        self.accepted: list[str] = []

    def type(self, marker: str) -> None:
        self.agent.api.type(self.sid, f"echo {marker} >> {self.log}\n".encode())
        self.accepted.append(marker)

    def ran(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def wait_ran(self, marker: str, timeout: float = 30) -> float:
        """Seconds until the shell ran ``marker``."""
        started = time.monotonic()
        until(lambda: marker in self.ran(), timeout=timeout, what=f"{marker} to run; "
              f"log:\n{self.agent.log_text()}")
        return time.monotonic() - started


def retries(agent, thread: str | None = None) -> list[float]:
    """The delays the agent announced for its retries so far (of one thread, or all)."""
    return [float(m.group(2)) for m in RETRY.finditer(agent.log_text(tail=None))
            if thread is None or m.group(1) == thread]


def background_output(agent, session_id: str, name: str) -> tuple[Path, Path]:
    """A job in the session that prints ``name-9`` once ``go`` exists, then touches ``done``:
    output made while the test holds something down."""
    go, done = agent.root / f"{name}.go", agent.root / f"{name}.done"
    agent.api.type(session_id, (f"(until [ -e {go} ]; do sleep 0.05; done; "
                                f"echo {name}-$((3*3)); touch {done}) &\n").encode())
    return go, done


def running_session(real_agent, cp):
    """The agent (retry cap ``CAP``) with a session in which three lines already ran and a
    background job waits for its go: (agent, session id, output reader, typist, go, done)."""
    agent = real_agent(cp, f"reconnect_max_delay = {CAP:g}\n")
    agent.start()
    sid, out = agent.open_session()
    typist = Typist(agent, sid)
    go, done = background_output(agent, sid, "during")
    for i in range(3):
        typist.type(f"before-{i}")
    typist.wait_ran("before-2")
    return agent, sid, out, typist, go, done


def test_control_plane_killed_mid_session(own_control_plane: ControlPlane, real_agent) -> None:
    cp = own_control_plane
    agent, sid, out, typist, go, done = running_session(real_agent, cp)
    # a burst still in flight (queued in Redis, maybe delivered but not yet acknowledged)
    # when the control plane dies: redelivered afterwards, run once
    for i in range(5):
        typist.type(f"burst-{i}")
    cp.kill()
    for api in (agent.api, out.api):
        api.close()  # their connections died with the server
    go.touch()
    until(done.exists, what="the background job's output")
    # the agent keeps trying, never waiting longer than its cap between attempts
    until(lambda: len(retries(agent, "poll")) >= 6, timeout=60,
          what="six reconnect attempts of the poll")
    assert max(retries(agent)) <= CAP
    cp.start()
    typist.type("after-0")
    assert typist.wait_ran("after-0") < CAP + RECONNECT_SLACK
    typist.type("after-1")
    typist.wait_ran("after-1")
    assert typist.ran() == typist.accepted  # each exactly once, in order
    seen = out.wait_for(b"during-9")
    out.wait_for(b"after-1")
    assert seen.count(b"during-9") == 1
    assert agent.session(sid).status == Status.CONNECTED
    assert agent.proc.poll() is None


@pytest.fixture
def own_redis():
    with RedisServer() as redis:
        yield redis


def test_redis_killed_mid_session(own_redis: RedisServer, tls_pki, django_db_setup,
                                  django_db_modify_db_settings, real_agent, tmp_path) -> None:
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log",
                      env={"CMDOP_TEST_REDIS_PORT": str(own_redis.port)}) as cp:
        agent, sid, out, typist, go, done = running_session(real_agent, cp)
        out.wait_for(b"before-2")
        own_redis.kill()
        go.touch()
        until(done.exists, what="the background job's output")
        # the agent tried to deliver it and was told to come back (503), within its cap
        until(lambda: retries(agent, "send"), timeout=60, what="the output's delivery to fail")
        assert max(retries(agent)) <= CAP
        own_redis.start()  # same port, config and dir; empty, as after a crash
        restarted = time.monotonic()
        # work sent now waits in the new Redis; the agent's poll picks it up
        until(lambda: _accepted(typist, "after-0"), timeout=30, what="input to be accepted")
        typist.wait_ran("after-0")
        assert time.monotonic() - restarted < CAP + RECONNECT_SLACK
        typist.type("after-1")
        typist.wait_ran("after-1")
        assert typist.ran() == typist.accepted  # each exactly once, in order
        assert not [m for m, n in Counter(typist.ran()).items() if n > 1]
        seen = out.wait_for(b"during-9")
        out.wait_for(b"after-1")
        assert seen.count(b"during-9") == 1
        assert agent.session(sid).status == Status.CONNECTED
        assert agent.proc.poll() is None
        agent.close()


def _accepted(typist: Typist, marker: str) -> bool:
    """Type ``marker``; False if the control plane could not take it yet (Redis still
    coming back: 503), so nothing was queued and the caller may try again."""
    from tests.support.control_plane import ApiError

    try:
        typist.type(marker)
    except ApiError as exc:
        if exc.status != 503:
            raise
        return False
    return True
