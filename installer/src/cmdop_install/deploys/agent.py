"""The agent on a fleet host: its own unprivileged user, a virtualenv from our wheel, its
config and CA, a sandboxed unit, and enrollment with a fresh single-use join token.

The join token reaches the host as a 0600 root-owned file and goes to ``cmdop-agent enroll
--token -`` on stdin: never argv, never the environment. A host that is already enrolled
(its credential file exists) gets no token.
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from cmdop_install.deploys.common import any_changed, extra, payload, put_files, temp_dir
from cmdop_install.deploys.ops import enroll_agent, python_venv, read

VENV = "/opt/cmdop-agent/venv"
STATE = "/var/lib/cmdop-agent"
CONFIG = "/etc/cmdop-agent/agent.toml"


def enrolled_now_or_before(enroll):
    """For ``_if``: the agent can run once it has a credential (enrolled now or earlier)."""

    def check() -> bool:
        now = enroll.did_change() if enroll.is_complete() else enroll.will_change
        return now or read(f"test -s {STATE}/credential.json && echo yes") == "yes"

    return check


@deploy("Agent")
def agent() -> None:
    a = extra("agent")
    user = a["user"]
    # a login shell: interactive sessions run the user's shell
    server.user(  # noqa: S604 - `shell` is the login shell, not a subprocess flag
        name=f"User {user} (runs the agent and its sessions)",
        user=user,
        system=True,
        shell="/bin/bash",
        home=f"/home/{user}",
        create_home=True,
        _sudo=True,
    )
    venv = python_venv(
        name="Agent virtualenv from the wheelhouse",
        venv=VENV,
        wheelhouse=a["wheelhouse"],
        temp_dir=temp_dir(),
        _sudo=True,
    )
    config = put_files("/etc/cmdop-agent", {"/etc/cmdop-agent": ("root", user, "750")})
    units = put_files("/etc/systemd/system", names=("cmdop-agent.service",))
    files.directory(
        name="Agent state folder",
        path=STATE,
        user=user,
        group=user,
        mode="700",
        present=True,
        _sudo=True,
    )
    systemd.daemon_reload(name="Reload systemd (agent unit)", _if=any_changed(units), _sudo=True)
    enrolled = enroll_agent(
        name="Enroll with a single-use join token",
        user=user,
        venv=VENV,
        config=CONFIG,
        credential=f"{STATE}/credential.json",
        token_src=str(payload() / a["join_token_src"]) if a["join_token_src"] else None,
        temp_dir=temp_dir(),
        _sudo=True,
    )
    systemd.service(
        name="Agent enabled and running",
        service="cmdop-agent.service",
        running=True,
        enabled=True,
        _if=enrolled_now_or_before(enrolled),
        _sudo=True,
    )
    systemd.service(
        name="Restart the agent (new code or settings)",
        service="cmdop-agent.service",
        restarted=True,
        _if=any_changed([venv, *config, *units]),
        _sudo=True,
    )
