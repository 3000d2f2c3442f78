"""Rotation state of a site: ``rotation.json`` (0600) beside ``secrets.enc``, and which
secrets can be rotated.

Light on purpose (json only): ``SiteDir`` reads it on every load, because it decides which
Postgres login the control plane uses, and ``secrets list``, ``status`` and ``check`` report
from it. The phases themselves run in ``cmdop_install.rotation``.

The file holds ``{"active_role": "blue"|"green", "rotation": null | {...}}``; the rotation
record names its secrets, the phase the site is being brought to, whether it got there, and
when each phase was reached. No secret value is ever in it.
"""

from __future__ import annotations

import json
from pathlib import Path

from cmdop_install.errors import UserError
from cmdop_install.fsutil import write_atomic

STATE_FILE = "rotation.json"
# forward order; "retired" is --finish (the old values are destroyed, no way back)
PHASES = ("staged", "admitted", "switched", "retired")
PG_LOGINS = ("postgres_password_blue", "postgres_password_green")

# secret -> None when `rotate` renews it, else why not (one line, shown by `secrets list`)
ROTATABLE: dict[str, str | None] = {
    "django_secret_key": None,
    "postgres_password_blue": None,
    "postgres_password_green": None,
    "postgres_password_admin": None,
    "postgres_password_audit_admin": None,
    "redis_password_app": None,
    # while Centrifugo is off (the only way this version deploys), nothing verifies these:
    # a new value is rendered and deployed and nothing can fail
    "redis_password_centrifugo": None,
    "redis_password_admin": None,
    "centrifugo_hmac_key": None,
    "centrifugo_api_key": None,
    # the control plane does not use it (join tokens are single-use values stored hashed)
    "agent_join_key": None,
    "owner_password": "not rotated by the installer: the Owner changes it in the dashboard",
    "totp_key": "not rotatable yet: the TOTP secrets sealed with it must be resealed in the "
    "database while both keys open them (the control plane reads several; no phase does it)",
}
# Redis ACL users: while a rotation of one is admitted or switched, users.acl lists its
# old and its new password (a Redis user may have several), loaded with ACL LOAD
REDIS_USERS = ("redis_password_app", "redis_password_centrifugo", "redis_password_admin")
# the internal PKI's rotations (files in pki/, not values in secrets.enc): every leaf anew
# from the site CA, or a new CA and every leaf from it (which includes the first)
PKI_LEAVES, PKI_CA = "pki_leaves", "pki_ca"
# what a site has besides secrets.enc that is secret too, and whether (how) `rotate` renews it
OTHER_SECRETS: dict[str, str] = {
    "pki: site CA": "yes, as pki_ca (cmdop-install rotate SITE pki_ca): a new CA signs every "
    "leaf; every host (agents included) trusts it beside the old one until --finish",
    "pki: leaf certificates": "yes, as pki_leaves (cmdop-install rotate SITE pki_leaves): "
    "new keys from the site CA, reloaded by each daemon; deploy also reissues one near expiry",
    "agents: machine credentials": "yes, as agent_credentials (cmdop-install rotate SITE "
    "agent_credentials): each agent gets a new one from the control plane, none passes here",
}


def load(site_dir: Path) -> dict:
    path = Path(site_dir) / STATE_FILE
    if not path.exists():
        return {"active_role": None, "rotation": None}
    try:
        state = json.loads(path.read_text())
        role, record = state["active_role"], state["rotation"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a rotation state file (restore it from a backup)") from None
    if role not in (None, "blue", "green") or not (
        record is None or (isinstance(record, dict) and record.get("phase") in PHASES)
    ):
        raise UserError(f"{path}: not a rotation state file (restore it from a backup)")
    return state


def save(site_dir: Path, state: dict) -> None:
    write_atomic(Path(site_dir) / STATE_FILE, (json.dumps(state, indent=1) + "\n").encode(), 0o600)


def apply_active_role(site_dir: Path, config: dict) -> None:
    """After a Postgres rotation the state, not site.toml, says which login is active."""
    role = load(site_dir)["active_role"]
    if role:
        config["postgres"]["active_role"] = role


def idle_role(active: str) -> str:
    return "green" if active == "blue" else "blue"


def logins_with_password(site_dir: Path, config: dict) -> tuple[str, ...]:
    """The blue/green logins that may log in now: the active one, and the idle one too while
    a rotation of the app's password is between admitting it and retiring the old one."""
    active = config["postgres"]["active_role"]
    record = load(site_dir)["rotation"]
    if record and "postgres_password" in record["names"] and record["phase"] in (
            "admitted", "switched"):
        return (active, idle_role(active))
    return (active,)


def admitted(site_dir: Path) -> tuple[str, ...]:
    """The Redis users whose staged password the servers accept beside the current one: those
    of a rotation past ``staged`` (a rollback back to ``staged`` takes it away again)."""
    record = load(site_dir)["rotation"]
    if not record or record["phase"] == "staged":
        return ()
    return tuple(n for n in record["names"] if n in REDIS_USERS)


def ca_admitted(site_dir: Path) -> bool:
    """Whether the hosts trust a staged CA beside the site's: a CA rotation past ``staged``
    that has not switched to it yet (after the switch the bundle keeps the replaced one)."""
    record = load(site_dir)["rotation"]
    return bool(record and PKI_CA in record["names"] and record["phase"] != "staged")
