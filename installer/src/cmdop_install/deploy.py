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

import click

from cmdop_install import check, render, wheelhouse
from cmdop_install.errors import UserError
from cmdop_install.fsutil import make_dir, write_atomic
from cmdop_install.hashing import scram_sha256_verifier
from cmdop_install.runner import RunResult, run_deploy

SITE_DEPLOY = "cmdop_install.deploys.site:site"


def deploy_site(
    site_dir: Path, *, limit: list[str] | None = None, dry_run: bool = False
) -> RunResult:
    site_dir = Path(site_dir)
    problems = [p for p in check.check_site(site_dir) if not p.startswith("warning:")]
    if problems:
        raise UserError(
            f"`cmdop-install check {site_dir}` found {len(problems)} problem(s), "
            f"nothing was deployed; first: {problems[0]}"
        )
    site, inventory, secrets, pem = render.load_for_render(site_dir)
    server_wheels = wheelhouse_facts("cmdop-server") if inventory.groups["control_plane"] else None
    with tempfile.TemporaryDirectory(prefix="cmdop-deploy-") as tmp:
        payload = Path(tmp)
        for host in inventory.hosts():
            write_payload(payload / host.name, site, inventory, host.name, secrets, pem)
            if "control_plane" in inventory.roles_of(host.name):
                _json(
                    payload / host.name / "control_plane.json",
                    {"wheelhouse": server_wheels, "credentials": list(render.CREDENTIALS)},
                )
        groups = {g: [(h.name, h.data) for h in hosts] for g, hosts in inventory.groups.items()}
        return run_deploy(
            groups, SITE_DEPLOY, limit=limit, dry_run=dry_run, data={"cmdop_payload": str(payload)}
        )


def write_payload(
    folder: Path, site, inventory, host_name: str, secrets: dict[str, str], pem
) -> None:
    """The host's rendered files plus what its deploys need to compare (no plaintext password)."""
    make_dir(folder / "files", 0o700)
    entries = []
    for i, f in enumerate(render.render_host(site, inventory, host_name, secrets, pem)):
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
    if "postgres" in inventory.roles_of(host_name):
        _json(
            folder / "postgres.json",
            postgres_facts(folder, site, inventory.host(host_name), secrets),
        )


def postgres_facts(folder: Path, site, host, secrets: dict[str, str]) -> dict:
    pg = site["postgres"]
    prefix = pg["role_prefix"]
    owner, login = f"{prefix}_owner", [f"{prefix}_blue", f"{prefix}_green"]
    active = f"{prefix}_{pg['active_role']}"
    password = secrets[f"postgres_password_{pg['active_role']}"]
    verifier = stable_verifier(password, active)
    sql_src = "files/password-active.sql"
    write_atomic(folder / sql_src, f"ALTER ROLE {active} PASSWORD '{verifier}';\n".encode(), 0o600)
    roles = ", ".join(f"'{r}'" for r in [owner, *login])
    return {
        "major": pg["major"],
        "listen_addresses": host.address,
        "roles_check_sql": (
            # names come from site.toml, validated as SQL identifiers ([a-z][a-z0-9_]*)
            f"SELECT (SELECT count(*) FROM pg_roles WHERE rolname IN ({roles})) = 3"  # noqa: S608
            f" AND EXISTS (SELECT FROM pg_database WHERE datname = '{pg['database']}')"
            f" AND (SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r"
            f" ON r.oid = s.setrole WHERE r.rolname IN ('{login[0]}', '{login[1]}')"
            f" AND 'role={owner}' = ANY (s.setconfig)) = 2"
        ),
        "passwords": [
            {
                "name": active,
                "verifier_md5": hashlib.md5(verifier.encode(), usedforsecurity=False).hexdigest(),
                "sql_src": sql_src,
            }
        ],
    }


def wheelhouse_facts(package: str) -> dict:
    """What a host needs to install ``package`` from our wheelhouse (built once, cached)."""
    folder = wheelhouse.build(package)
    files = sorted(p.name for p in folder.iterdir() if p.suffix == ".whl")
    files.append("requirements.txt")
    distribution = package.replace("-", "_")
    (ours,) = [f for f in files if f.startswith(distribution + "-")]
    return {"key": folder.name, "path": str(folder), "files": files, "package_wheel": ours}


def stable_verifier(password: str, role: str) -> str:
    """A SCRAM verifier whose salt derives from (password, role): the same inputs give the
    same verifier, so an unchanged password is recognised and never re-sent."""
    salt = hmac.new(password.encode(), f"cmdop-pg-salt:{role}".encode(), hashlib.sha256).digest()
    return scram_sha256_verifier(password, salt=salt[:16])


def _json(path: Path, value) -> None:
    write_atomic(path, (json.dumps(value, indent=1) + "\n").encode(), 0o600)


@click.command("deploy")
@click.argument("site_dir", type=click.Path(file_okay=False, path_type=Path), metavar="SITE_DIR")
@click.option(
    "--limit",
    "limit",
    multiple=True,
    metavar="GROUP|HOST",
    help="Only these groups or hosts (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; touch nothing.")
def deploy_command(site_dir: Path, limit: tuple[str, ...], dry_run: bool) -> None:
    """Converge every host of SITE_DIR: Postgres, Redis, nginx, the control plane, the agents.

    Only what differs changes; a second deploy of an unchanged site reports zero changes.
    Secrets never appear in the output.
    """
    result = deploy_site(site_dir, limit=list(limit) or None, dry_run=dry_run)
    verb = "would change" if dry_run else "changed"
    for host in result.hosts.values():
        if host.error:
            click.echo(f"{host.name}: FAILED: {host.error}")
            continue
        click.echo(f"{host.name}: {host.changes} {verb}")
        for op in host.ops:
            if op.changed or not op.success:
                click.echo(f"    {'FAILED ' if not op.success else ''}{op.name}")
    if result.failed:
        raise UserError(
            f"deploy failed on {', '.join(result.failed)}; fix and rerun "
            "(the hosts that succeeded are consistent and will report no change)"
        )
    click.echo(
        f"{'dry run: ' if dry_run else ''}{result.changes} change(s) on {len(result.hosts)} host(s)"
    )
