"""The agent on a fleet host: its own unprivileged user, a virtualenv from our wheel, its
config and CA, a sandboxed unit, and enrollment with a fresh single-use join token.

Code lives in ``/opt/cmdop-agent/releases/<version>/venv`` behind the ``current`` link (and
``previous``, the release a rollout replaced, for rollback). ``deploy`` installs a release
only where none is; changing versions is ``agents rollout``'s job.

The join token reaches the host as a 0600 root-owned file and goes to ``cmdop-agent enroll
--token -`` on stdin: never argv, never the environment. A host that is already enrolled
(its credential file exists) gets no token.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from cmdop_install.deploys.common import any_changed, extra, payload, put_files, temp_dir
from cmdop_install.deploys.facts import IsNonEmptyFile
from cmdop_install.deploys.ops import agent_release, agent_rollback, enroll_agent, fact

ROOT = "/opt/cmdop-agent"
VENV = f"{ROOT}/current/venv"
STATE = "/var/lib/cmdop-agent"
CONFIG = "/etc/cmdop-agent/agent.toml"


def enrolled_now_or_before(enroll):
    """For ``_if``: the agent can run once it has a credential (enrolled now or earlier)."""

    def check() -> bool:
        now = enroll.did_change() if enroll.is_complete() else enroll.will_change
        return now or fact(IsNonEmptyFile, f"{STATE}/credential.json")

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
    release = a["release"]
    code = agent_release(
        name=f"Agent release {release['version']}",
        root=ROOT,
        version=release["version"],
        wheelhouse=release["wheelhouse"],
        temp_dir=temp_dir(),
        switch=release["switch"],
        _sudo=True,
    )
    config = put_files("/etc/cmdop-agent", {"/etc/cmdop-agent": ("root", user, "750")},
                       names=("agent.toml",))
    # the site CA bundle: the agent reads it anew when it changes (a CA rotation), so a
    # change restarts nothing and no session is cut
    put_files("/etc/cmdop-agent", names=("ca.crt",))
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
        _if=any_changed([code, *config, *units]),
        _sudo=True,
    )


@deploy("Agent rollback")
def rollback() -> None:
    """Back to release ``host.data.cmdop_rollback_to`` (what ran before a rollout), restarted."""
    version = host.data.cmdop_rollback_to
    back = agent_rollback(
        name=f"Agent back to release {version}", root=ROOT, version=version, _sudo=True
    )
    systemd.service(
        name="Restart the agent (previous release)",
        service="cmdop-agent.service",
        restarted=True,
        _if=any_changed([back]),
        _sudo=True,
    )
