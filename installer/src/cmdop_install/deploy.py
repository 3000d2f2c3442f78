"""`cmdop-install deploy SITE`: render every host's files, check them, and converge the hosts.

The rendered files (secrets included) go to a 0700 folder on this machine for the length of
the run; the pyinfra deploys (``cmdop_install.deploys``) upload them with their owner and
mode and change only what differs, so a second deploy of an unchanged site reports zero
changes. Nothing is sent when ``check`` finds a problem.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
from pathlib import Path

from cmdop_install import (
    agent_releases,
    bundle,
    check,
    filediff,
    manage,
    pgsql,
    render,
    rotation_state,
    wheelhouse,
)
from cmdop_install.errors import UserError
from cmdop_install.fsutil import make_dir, write_atomic
from cmdop_install.hashing import scram_sha256_verifier
from cmdop_install.runner import RunResult, read_facts, run_deploy
from cmdop_install.sitedir import SiteDir
from cmdop_install.status import record_deploy

SITE_DEPLOY = "cmdop_install.deploys.site:site"
AGENT_CREDENTIAL = "/var/lib/cmdop-agent/credential.json"
# the state of the host's rendered files before the run, read by filediff's probe
FILES_FACT = "rendered_files"
# payload file names (the files hold secrets; the names do not)
JOIN_TOKEN_SRC = "files/join-token"  # noqa: S105
OWNER_PASSWORD_SRC = "files/owner-password"  # noqa: S105


def deploy_site(
    site: SiteDir,
    *,
    limit: list[str] | None = None,
    dry_run: bool = False,
    agent_release: agent_releases.Release | None = None,
    bundle_file: Path | None = None,
    preflighted: bool = False,
) -> RunResult:
    """Converge the hosts (``limit``: some of them). With ``agent_release`` (a rollout), the
    agents switch to that release; otherwise an agent host without one gets the shipped one.
    With a bundle (``bundle_file`` or site.toml ``[bundle] file``) every package comes from
    it and nothing from the network. ``preflighted``: the caller has just run ``preflight``
    over these hosts (a rollout's first batch), so they are not probed twice.

    The bundle is verified first, then the site checked and the certificates the inventory
    now needs issued (``check.refuse_on_problems``); nothing reaches a host unless all
    succeed."""
    with bundle.opened(site.config, bundle_file) as offline:
        check.refuse_on_problems(site, "deployed")
        inventory = site.inventory
        if site.config.centrifugo_enabled:
            raise UserError(
                "site.toml: centrifugo.binary is set, but this version cannot deploy Centrifugo "
                'yet; set it to "" (live output then flows through the REST cursor API)'
            )
        if not preflighted:
            preflight(inventory, limit)
        wheels: dict = {"control_plane": None, "agents": None}
        if inventory.groups["control_plane"]:
            wheels["control_plane"] = (offline.wheelhouse("cmdop-server") if offline
                                       else wheelhouse_facts("cmdop-server"))
        if inventory.groups["agents"]:
            release = agent_release or (offline.agent_release(None) if offline
                                        else agent_releases.shipped())
            wheels["agents"] = release.facts(switch=bool(agent_release))
        result = _converge(site, limit, dry_run, wheels, offline)
    if not dry_run:
        record_deploy(site.path, result.changes, result.failed)
    return result


def _converge(site: SiteDir, limit: list[str] | None, dry_run: bool, wheels: dict,
              offline: bundle.Offline | None) -> RunResult:
    """Send every host its payload; enroll the agents that have no credential yet."""
    inventory, groups = site.inventory, site.inventory.pyinfra_groups()
    with tempfile.TemporaryDirectory(prefix="cmdop-deploy-") as tmp:
        payload = Path(tmp)
        for host in inventory.hosts():
            write_payload(payload / host.name, site, host.name)
            write_extras(payload / host.name, site, host.name, wheels)
            if offline is not None:
                _json(payload / host.name / "bundle.json", offline.host_facts)
        data = {"cmdop_payload": str(payload)}
        facts = {"enrolled": f"test -s {AGENT_CREDENTIAL} && echo yes || echo no"}
        probes = {h.name: {FILES_FACT: filediff.probe_command(site.files(h.name))}
                  for h in inventory.hosts()}
        result = run_deploy(
            groups,
            SITE_DEPLOY,
            limit=limit,
            dry_run=dry_run,
            data=data,
            facts=facts if inventory.groups["agents"] else None,
            facts_before=probes,
        )
        for name, done in result.hosts.items():
            if FILES_FACT in done.facts:
                done.files = filediff.changes(name, site.files(name), done.facts.pop(FILES_FACT))
        waiting = [
            h.name
            for h in inventory.groups["agents"]
            if h.name in result.hosts and result.hosts[h.name].facts.get("enrolled") == "no"
        ]
        if dry_run or not waiting or result.failed:
            return result
        # Second pass, only for agents not yet enrolled: one fresh single-use token each.
        tokens = issue_join_tokens(site, len(waiting))
        for name, token in zip(waiting, tokens, strict=True):
            write_atomic(payload / name / JOIN_TOKEN_SRC, (token + "\n").encode(), 0o600)
            write_extras(payload / name, site, name, wheels, JOIN_TOKEN_SRC)
        enrolled = run_deploy(groups, SITE_DEPLOY, limit=waiting, data=data)
        for name, host_result in enrolled.hosts.items():
            result.hosts[name].ops += host_result.ops
            result.hosts[name].error = host_result.error
        return result


SUPPORTED_OS = "debian-12"
OS_COMMAND = ". /etc/os-release && echo $ID-$VERSION_ID"


def preflight(inventory, limit: list[str] | None, facts: dict[str, str] | None = None,
              host_facts: dict[str, dict[str, str]] | None = None) -> RunResult:
    """Every host answers over SSH and runs Debian 12, or nothing is changed anywhere.

    ``facts`` (a host in ``host_facts``: its own) are read in the same round, so a caller
    that needs more from the hosts connects to them once; the probe is returned."""
    probe = read_facts(
        inventory.pyinfra_groups(),
        {"os": OS_COMMAND, **(facts or {})},
        limit=limit,
        host_facts={name: {"os": OS_COMMAND, **own} for name, own in (host_facts or {}).items()},
    )
    problems = []
    for name, host in sorted(probe.hosts.items()):
        address = inventory.host(name).ssh_hostname
        if host.error:
            problems.append(f"{name} ({address}): {host.error}")
        elif host.facts.get("os") != SUPPORTED_OS:
            problems.append(
                f"{name} ({address}): runs {host.facts.get('os') or 'an unknown OS'}; "
                "cmdop-install supports Debian 12 (bookworm) only"
            )
    if problems:
        raise UserError("nothing was changed: " + "; ".join(problems))
    return probe


def write_extras(
    folder: Path,
    site: SiteDir,
    host_name: str,
    wheels: dict,
    join_token: str | None = None,
) -> None:
    """Per-component facts the deploys compare against (names, keys; no secret values)."""
    roles = site.inventory.roles_of(host_name)
    config = site.config
    if "control_plane" in roles:
        write_atomic(
            folder / OWNER_PASSWORD_SRC, (site.secrets["owner_password"] + "\n").encode(), 0o600
        )
        owner = {
            "email": config["site"]["owner_email"] or f"admin@{config['site']['domain']}",
            "workspace": site.name,
            "password_src": OWNER_PASSWORD_SRC,
        }
        audit = {
            "app_role": render.postgres_names(config)["app"],
            "retention_days": config["audit"]["retention_days"],
        }
        _json(
            folder / "control_plane.json",
            {"wheelhouse": wheels["control_plane"], "owner": owner, "audit": audit},
        )
    if "agents" in roles:
        _json(
            folder / "agent.json",
            {
                "release": wheels["agents"],
                "user": config["agent"]["user"],
                "join_token_src": join_token,
            },
        )


def issue_join_tokens(site: SiteDir, count: int) -> list[str]:
    """Single-use join tokens from the control plane (a management command on its first host).

    The tokens come back as a pyinfra fact: they are never printed and live only in the
    0600 payload folder of this run.
    """
    first = site.inventory.groups["control_plane"][0].name
    command = manage.join_tokens_command(site.name, count)
    result = read_facts(site.inventory.pyinfra_groups(), {"tokens": command}, limit=[first])
    return manage.parse_join_tokens(result.hosts[first].facts.get("tokens", ""), count, first)


def write_payload(folder: Path, site: SiteDir, host_name: str) -> None:
    """The host's rendered files plus what its deploys need to compare (no plaintext password)."""
    make_dir(folder / "files", 0o700)
    entries = []
    for i, f in enumerate(site.files(host_name)):
        src = f"files/{i}"
        write_atomic(folder / src, f.content, 0o600)
        entries.append(
            {
                "path": f.path,
                "mode": f"{f.mode:o}",
                "owner": f.owner,
                "group": f.group,
                "secret": f.secret,
                "src": src,
            }
        )
    _json(folder / "manifest.json", entries)
    if "postgres" in site.inventory.roles_of(host_name):
        logins = rotation_state.logins_with_password(site.path, site.config)
        _json(
            folder / "postgres.json",
            postgres_facts(
                folder, site.config, site.inventory.host(host_name), site.secrets, logins
            ),
        )


def postgres_facts(
    folder: Path, site, host, secrets: dict[str, str], logins: tuple[str, ...] = ()
) -> dict:
    """``logins``: the blue/green logins that have a password (default: the active one);
    the other one's is NULL, so it cannot log in."""
    passwords = []
    for login in login_passwords(site, secrets, logins):
        sql_src = f"files/password-{login['role']}.sql"
        write_atomic(folder / sql_src, login["sql"].encode(), 0o600)
        passwords.append({"name": login["role"], "verifier_md5": login["verifier_md5"],
                          "sql_src": sql_src})
    return {
        "major": site["postgres"]["major"],
        "listen_addresses": host.address,
        "roles_check_sql": pgsql.roles_check(render.postgres_names(site)),
        "passwords": passwords,
        "backup": {"directory": site["backup"]["directory"],
                   "timer": bool(site["backup"]["schedule"])},
    }


def login_passwords(site, secrets: dict[str, str], logins: tuple[str, ...] = ()) -> list[dict]:
    """Each login role's wanted password: ``role``, the SQL that sets it (a SCRAM verifier,
    or NULL for a blue/green login not in ``logins``) and the md5 of the stored verifier it
    gives, which a deploy compares (the pyinfra deploy and the Ansible role alike)."""
    pg = render.postgres_names(site)
    logins = logins or (site["postgres"]["active_role"],)
    wanted: list[tuple[str, str | None]] = [
        (pg[login], f"postgres_password_{login}" if login in logins else None)
        for login in ("blue", "green")
    ]
    wanted += [
        (pg["admin"], "postgres_password_admin"),
        (pg["audit_admin"], "postgres_password_audit_admin"),
    ]
    passwords = []
    for role, secret in wanted:
        if secret is None:
            sql, verifier_md5 = pgsql.clear_password(role), ""  # md5 of NULL reads as ""
        else:
            verifier = stable_verifier(secrets[secret], role)
            sql = pgsql.set_password(role, verifier)
            verifier_md5 = hashlib.md5(verifier.encode(), usedforsecurity=False).hexdigest()
        passwords.append({"role": role, "sql": sql, "verifier_md5": verifier_md5})
    return passwords


def wheelhouse_facts(package: str) -> dict:
    """What a host needs to install ``package`` from our wheelhouse (built once, cached)."""
    return wheelhouse.describe(wheelhouse.build(package), package)


def stable_verifier(password: str, role: str) -> str:
    """A SCRAM verifier whose salt derives from (password, role): the same inputs give the
    same verifier, so an unchanged password is recognised and never re-sent."""
    salt = hmac.new(password.encode(), f"cmdop-pg-salt:{role}".encode(), hashlib.sha256).digest()
    return scram_sha256_verifier(password, salt=salt[:16])


def _json(path: Path, value) -> None:
    write_atomic(path, (json.dumps(value, indent=1) + "\n").encode(), 0o600)
