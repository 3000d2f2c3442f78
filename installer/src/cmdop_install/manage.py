"""The installer -> control-plane contract: management commands and what they answer.

The installer reaches the control plane's state through ``cmdop-server`` management
commands run on a control-plane host (as pyinfra facts, so their output never reaches a
log). This module builds those command lines and parses their replies; it imports no
pyinfra, so the command line starts without it. The commands themselves live in
``server/src/cmdop_server/*/management/commands/``.
"""

from __future__ import annotations

import json

from cmdop_install.errors import UserError

# Each cmdop-server release is a virtualenv of its own, releases/<wheelhouse key>/venv; the
# service and every management command run the one `current` links to (a deploy installs a
# release beside the serving one, migrates with it, then switches the link: docs/upgrades.md)
SERVER_ROOT = "/opt/cmdop/server"
SERVER_VENV = f"{SERVER_ROOT}/current/venv"
ADMIN_DIR = "/etc/cmdop/admin"
CREDENTIALS_DIR = "/etc/cmdop/credentials"
# The control plane's credential files (docs/server-config.md), loaded with LoadCredential=:
# file name -> the secret it holds (None: filled by rotation or chosen at render time)
CREDENTIALS = {
    "secret_key": "django_secret_key",
    "secret_key_fallbacks": None,  # the key a rotation replaced, until `rotate --finish`
    "db_password": None,  # the active blue/green role's password
    "redis_password": "redis_password_app",
    "centrifugo_api_key": "centrifugo_api_key",
    "centrifugo_hmac_key": "centrifugo_hmac_key",
    "agent_join_key": "agent_join_key",
    "totp_key": "totp_key",  # seals TOTP secrets at rest (cmdop_server.sealing)
}
# How an inventory host is found among the control plane's machines: an agent enrolls
# under its own host name (``socket.gethostname()``), which the server lower-cases; on
# bare metal it rarely equals the inventory name. Read on the host with this command.
HOSTNAME_COMMAND = "hostname"


def server_release_venv(key: str) -> str:
    """The virtualenv of the cmdop-server release built from wheelhouse ``key``."""
    return f"{SERVER_ROOT}/releases/{key}/venv"


def manage_command(args: str, audit_admin: bool = False, venv: str = SERVER_VENV) -> str:
    """A cmdop-server management command as the service runs it (user, credentials, settings).

    ``audit_admin``: with each database as its owner's admin login (``/etc/cmdop/admin``:
    ``<prefix>_admin`` for the app's, ``<prefix>_audit_admin`` for the audit log's), for
    migrations and grants; the service itself never gets those credentials. ``venv``: the
    release that runs it (a deploy migrates with the release it is about to switch to).
    """
    admin = ("db_password", "audit_db_password") if audit_admin else ()
    props = " ".join(
        f"-p LoadCredential={name}:{CREDENTIALS_DIR}/{name}"
        for name in CREDENTIALS
        if name not in admin
    )
    toml = "/etc/cmdop/server.toml"
    if audit_admin:
        props += "".join(
            f" -p LoadCredential={name}:{ADMIN_DIR}/credentials/{name}" for name in admin
        )
        toml = f"{ADMIN_DIR}/server.toml"
    return (
        "systemd-run --quiet --wait --pipe --collect -p User=cmdop -p Group=cmdop "
        f"{props} -E CMDOP_SERVER_TOML={toml} "
        "-E DJANGO_SETTINGS_MODULE=cmdop_server.settings.production "
        f"{venv}/bin/cmdop-server {args}"
    )


def fleet_status_command(workspace: str) -> str:
    """Every machine of ``workspace`` as one JSON line (see ``parse_fleet``)."""
    return manage_command(f"fleet_status --workspace {workspace}")


def parse_fleet(output: str) -> dict[str, dict]:
    """``fleet_status`` output by machine host name: online, last_seen, agent_version,
    boot_id, os. Lines that are not ours (warnings) are skipped."""
    fleet = {}
    for line in output.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "hostname" in row:
            fleet[row["hostname"]] = row
    return fleet


def machine_key(hostname: str) -> str:
    """The control plane's name for the machine whose own host name is ``hostname``."""
    return hostname.strip().lower()


def machine_of(fleet: dict[str, dict], hostname: str) -> dict:
    """The control plane's row for the host that calls itself ``hostname`` ({} if unknown)."""
    return fleet.get(machine_key(hostname), {})


def machine_credentials_command(workspace: str, action: str = "", grace: int = 0) -> str:
    """Every machine's credential state as JSON lines (``parse_fleet`` reads them), after
    ``action``: ``open`` (``grace`` seconds to take the new credential), ``close`` (end
    the grace), ``cancel`` (a rollback), or "" to only read. No credential is in its output:
    the control plane hands them to the agents itself (docs/agent-protocol.md)."""
    flags = {"": "", "open": f" --open --grace {int(grace)}", "close": " --close",
             "cancel": " --cancel"}[action]
    return manage_command(f"machine_credentials --workspace {workspace}{flags}")


def join_tokens_command(workspace: str, count: int, ttl: int = 900) -> str:
    """``count`` single-use join tokens, one per line (see ``parse_join_tokens``)."""
    return manage_command(f"issue_join_tokens --workspace {workspace} --count {count} --ttl {ttl}")


def parse_join_tokens(output: str, count: int, host: str) -> list[str]:
    tokens = output.split()
    if len(tokens) != count:
        raise UserError(
            f"{host}: the control plane issued {len(tokens)} of {count} join tokens; "
            "is it up? (`cmdop-install status` shows it)"
        )
    return tokens


def api_key_command(workspace: str, name: str) -> str:
    """A new API key of ``workspace``: ``<id> <key>`` (see ``parse_api_key``)."""
    return manage_command(f"issue_api_key --workspace {workspace} --name {name}")


def parse_api_key(output: str) -> tuple[str, str]:
    """(key id, key) from ``issue_api_key``; the key is a secret: never print it."""
    key_id, _, key = output.strip().partition(" ")
    if not key:
        raise UserError("the control plane did not issue an API key (is it running?)")
    return key_id, key
