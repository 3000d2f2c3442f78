"""``cmdop connect`` in a real terminal: tmux (a pty of its own, driven by send-keys and read
by capture-pane) runs a local shell, which runs ``cmdop connect`` to a real agent's shell."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cmdop_server import credentials
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions as identity_actions
from cmdop_server.identity.models import ApiKey

from tests.server_sessions.cmdop_user import CmdopUser
from tests.server_sessions.helpers import owner_membership
from tests.support.control_plane import until

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


CMDOP = shlex.join([sys.executable, "-m", "cmdop_agent.client.cli"])
# cmdop as it runs against a control plane older than the bearer's terminal socket: the
# handshake's 403 makes terminal_socket() answer None (tests/agent/test_websocket.py)
CMDOP_PER_REQUEST = shlex.join([sys.executable, "-c", (
    "import sys; from cmdop_agent.client.userapi import Session; "
    "Session.terminal_socket = lambda self: None; "
    "from cmdop_agent.client.cli import main; sys.exit(main())")])


class Tmux:
    """One tmux server on a socket of its own, one session ``t`` running a local bash."""

    def __init__(self, socket: str, cols: int, rows: int, env: dict[str, str],
                 rcfile: Path) -> None:
        self.base = [shutil.which("tmux") or "tmux", "-L", socket, "-f", "/dev/null"]
        rcfile.write_text("PS1='LOCAL$ '\n")
        self.tmux("new-session", "-d", "-s", "t", "-x", str(cols), "-y", str(rows),
                  f"bash --noprofile --rcfile {shlex.quote(str(rcfile))}", env=env)
        self.tmux("set-option", "-g", "window-size", "manual")

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True,
                              text=True, env=env, timeout=10).stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def line(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)
        self.keys("Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t", "-S", "-300")

    def wait(self, needle: str, timeout: float = 30) -> str:
        seen = [""]

        def shown() -> str:
            seen[0] = self.screen()
            return seen[0] if needle in seen[0] else ""

        try:
            return until(shown, timeout=timeout, what=f"{needle!r} on the tmux screen")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{seen[0][-1500:]}") from None

    def remote_prompt(self) -> None:
        """The remote shell's own prompt (``user@host:dir# ``) below the connect line."""
        def prompt() -> bool:
            lines = [x for x in self.screen().splitlines() if x.strip()]
            return "connect" not in lines[-1] and lines[-1].rstrip().endswith(("#", "$"))

        until(prompt, timeout=30, what="the remote prompt")

    def connect(self, hostname: str, stty_before: Path | None = None) -> None:
        """``cmdop connect`` from the local shell (after saving ``stty -a`` there), up to
        the remote prompt; the local shell then prints cmdop's exit status."""
        if stty_before is not None:
            self.line(f"stty -a > {stty_before}")
        self.line(f"{CMDOP} connect {hostname}; echo local-rc=$?")
        self.remote_prompt()

    def stty_after(self, path: Path) -> str:
        self.line(f"stty -a > {path}")
        return until(lambda: path.exists() and path.read_text(), what="stty -a after")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def terminal(control_plane, real_agent, tmp_path):
    agent = real_agent(control_plane)
    agent.start()
    person = CmdopUser(tmp_path / "person", control_plane.url, control_plane.pki.ca,
                       api_key=agent.key)
    person.home.mkdir()
    env = {**person.env(), "CMDOP_SERVER": person.server, "CMDOP_CA": str(person.ca),
           "TERM": "xterm"}
    tmux = Tmux(f"cmdop-test-{tmp_path.name}", 100, 30, env, tmp_path / "bashrc")
    try:
        tmux.wait("LOCAL$")
        yield agent, tmux, tmp_path
    finally:
        tmux.kill()


def test_connect_prompt_resize_interrupt_and_exit_status(terminal) -> None:
    agent, tmux, tmp = terminal
    before = tmp / "stty-before"
    tmux.connect(agent.machine.hostname, before)
    tmux.line("PS1='RE''MOTE> '")  # split so the echoed command line does not match
    tmux.wait("REMOTE>")
    tmux.line("stty size")
    tmux.wait("30 100")
    tmux.tmux("resize-window", "-t", "t", "-x", "120", "-y", "40")
    until(lambda: "40 120" in (tmux.line("stty size") or tmux.screen()), timeout=20,
          interval=1, what="stty size to follow the resize")
    tmux.line("sleep 60; echo sl''ept-through")
    time.sleep(1)
    tmux.keys("C-c")
    tmux.line("echo after-inter''rupt")
    screen = tmux.wait("after-interrupt", timeout=15)
    assert "slept-through" not in screen  # Ctrl-C reached the remote sleep, not cmdop
    tmux.line("exit 3")
    tmux.wait("local-rc=3")
    # the same modes and characters; only the size differs: the window was resized
    assert tmux.stty_after(tmp / "stty-after").replace(
        "rows 40; columns 120", "rows 30; columns 100") == before.read_text()


def test_escape_sequence_detaches_and_join_returns(terminal) -> None:
    agent, tmux, _ = terminal
    tmux.connect(agent.machine.hostname)
    tmux.line("PS1='RE''MOTE> '; kept=still-he''re")
    tmux.wait("REMOTE>")
    tmux.keys("Enter", "~", ".")
    screen = tmux.wait("local-rc=0")
    sid = screen.split("cmdop join ", 1)[1].split()[0]
    assert agent.session(sid).status == "background"
    tmux.line(f"{CMDOP} join {sid}; echo local-rc=$?")
    tmux.line("echo $kept")
    tmux.wait("still-here\n")
    tmux.line("exit 4")
    tmux.wait("local-rc=4")


def test_observer_join_shows_output_and_sends_no_keys(terminal) -> None:
    agent, tmux, _ = terminal
    sid, out = agent.open_session()
    member, member_api = agent.member("member")
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": member.pk, "role": "observer"})
    # the observer's own key (the tmux shell's environment holds the owner's)
    tmux.line(f"CMDOP_API_KEY={member_api.key} {CMDOP} join {sid}; echo local-rc=$?")
    agent.api.type(sid, b"echo from-oper''ator\n")
    tmux.wait("from-operator")
    tmux.line("echo from-obs''erver")  # typed by the observer: never reaches the shell
    agent.api.type(sid, b"echo mark''er\n")
    out.wait_for(b"marker")
    assert b"from-obs" not in out.data
    tmux.keys("Enter", "~", ".")
    tmux.wait("local-rc=0")
    assert agent.session(sid).status == "connected"  # an observer's detach changes nothing


def test_terminal_restored_when_cmdop_is_killed(terminal) -> None:
    """SIGTERM to cmdop mid-session: one line, non-zero, and the local terminal as before."""
    agent, tmux, tmp = terminal
    before = tmp / "stty-before"
    tmux.connect(agent.machine.hostname, before)
    shell = tmux.tmux("list-panes", "-t", "t", "-F", "#{pane_pid}").strip()
    children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGTERM)
    screen = tmux.wait("local-rc=1")
    assert "cmdop: stopped by signal SIGTERM" in screen and "Traceback" not in screen
    assert tmux.stty_after(tmp / "stty-after") == before.read_text()


def test_a_revoked_key_ends_connect_in_one_line(terminal) -> None:
    """connect runs on the terminal WebSocket (its attach is audited; the per-request path
    has no attach), whose 2 s re-check sees the key revoked: one line, exit 1, the local
    terminal as before."""
    agent, tmux, tmp = terminal
    before = tmp / "stty-before"
    tmux.connect(agent.machine.hostname, before)
    until(lambda: AuditEvent.objects.filter(event="session.attach",
                                            user_id=agent.owner.pk).exists(),
          what="the terminal socket's attach audited")
    key = ApiKey.unscoped.get(key_hash=credentials.sha256_hex(agent.key))
    identity_actions.do_revoke_api_key(owner_membership(agent.ws, agent.owner), key.pk)
    screen = tmux.wait("local-rc=1")
    assert "cmdop: the API key was refused (revoked or mistyped)" in screen
    assert "Traceback" not in screen
    assert tmux.stty_after(tmp / "stty-after") == before.read_text()


def test_connect_falls_back_to_one_request_per_key(terminal) -> None:
    """No terminal socket (an older control plane): keys go as requests, output is
    long-polled, resize and the exit status work the same; no socket attach is audited."""
    agent, tmux, _ = terminal
    tmux.line(f"{CMDOP_PER_REQUEST} connect {agent.machine.hostname}; echo local-rc=$?")
    tmux.remote_prompt()
    tmux.line("PS1='RE''MOTE> '")
    tmux.wait("REMOTE>")
    tmux.tmux("resize-window", "-t", "t", "-x", "110", "-y", "35")
    until(lambda: "35 110" in (tmux.line("stty size") or tmux.screen()), timeout=20,
          interval=1, what="stty size to follow the resize")
    tmux.line("exit 6")
    tmux.wait("local-rc=6")
    assert not AuditEvent.objects.filter(event="session.attach",
                                         user_id=agent.owner.pk).exists()
