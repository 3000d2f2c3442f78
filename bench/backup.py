"""Backup of a site with 100,000 audit rows and 1,000 sessions, and the database part of a
restore, timed on loopback.

Bounded and local: a scratch Postgres with the site's rendered pg_hba.conf, settings and
certificates (tests/support/services.py), the schema migrated by cmdop-server as the admin
logins, the first Owner, then ``--sessions`` sessions on 20 machines and ``--audit-rows``
audit rows with their hash chain (bulk inserts). Timed: the database host's part
(``cmdop-backup``: both pg_dumps over TLS as the admins), the operator machine's part (tar
of dumps + site folder, sealed with the site's key), opening the archive, and
``pg_restore --clean --single-transaction`` of both dumps as the admins over TLS followed by
``audit_verify``. Row counts are compared before and after.

    .venv/bin/python bench/backup.py [--audit-rows 100000 --sessions 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from cmdop_install import backup  # noqa: E402
from cmdop_install.hashing import scram_sha256_verifier  # noqa: E402
from cmdop_install.render import load_for_render, render_host  # noqa: E402
from cmdop_install.sitedir import SiteDir  # noqa: E402

from tests.support.services import PostgresServer  # noqa: E402
from tests.support.sites import key_env, make_site  # noqa: E402

CONF_DIR = "/etc/postgresql/15/main"
TABLES = {"cmdop": ("identity_user", "identity_workspace", "machines_machine",
                    "cmdop_sessions_session"),
          "cmdop_audit": ("audit_auditevent",)}
GENERATE = """
import uuid
from datetime import timedelta
from django.db import transaction
from django.utils import timezone
from cmdop_server.audit import chain
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity.models import User, Workspace
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Session

user, ws = User.objects.get(), Workspace.objects.get()
machines = Machine.unscoped.bulk_create([
    Machine(workspace=ws, public_id=uuid.uuid4().hex, hostname=f"bench-{i}",
            enrollment="join_token", credential_hash=uuid.uuid4().hex + uuid.uuid4().hex[:32])
    for i in range(20)])
Session.unscoped.bulk_create([
    Session(workspace=ws, machine=machines[i % 20], created_by=user,
            public_id=uuid.uuid4().hex, status="ended", exit_code=0)
    for i in range(SESSIONS)])
last = AuditEvent.objects.using("audit").filter(workspace_id=ws.pk).order_by("-pk").first()
prev = last.row_hash if last else chain.GENESIS
start = timezone.now() - timedelta(days=30)
for batch in range(0, ROWS, 5000):
    rows = []
    for i in range(batch, min(batch + 5000, ROWS)):
        row = AuditEvent(occurred_at=start + timedelta(seconds=i), event="session.input",
                         success=True, workspace_id=ws.pk, user_id=user.pk,
                         user_label=user.email, method="api_key", ip="10.1.2.3",
                         data={"session": "s" + str(i % SESSIONS), "bytes": i % 97})
        row.prev_hash, row.row_hash = prev, chain.link(prev, row)
        prev = row.row_hash
        rows.append(row)
    with transaction.atomic(using="audit"):
        AuditEvent.objects.using("audit").bulk_create(rows)
"""


def _server(pg: PostgresServer, args: list[str], stdin: str = "") -> str:
    """cmdop-server with the rendered admin settings and credentials (as the installer)."""
    etc = pg.dir / "etc/cmdop"
    creds = pg.dir / "creds-admin"
    creds.mkdir(exist_ok=True)
    for source in (etc / "credentials", etc / "admin/credentials"):
        for secret in source.iterdir():
            (creds / secret.name).write_bytes(secret.read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CMDOP_"))}
    env |= {"CMDOP_CONFIG_DIR": str(creds), "CMDOP_SERVER_TOML": str(etc / "admin/server.toml"),
            "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.production"}
    exe = Path(sys.executable).with_name("cmdop-server")
    done = subprocess.run([str(exe), *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise SystemExit(f"cmdop-server {args[0]} failed: {done.stderr[-2000:]}")
    return done.stdout


def _counts(pg: PostgresServer) -> dict[str, int]:
    return {table: int(pg.psql(f"SELECT count(*) FROM {table}", dbname=db))  # noqa: S608 - our names
            for db, tables in TABLES.items() for table in tables}


def _timed(label: str, figures: dict[str, float], fn, *args):
    started = time.monotonic()
    result = fn(*args)
    figures[label] = time.monotonic() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audit-rows", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000)
    args = parser.parse_args()
    if not (0 < args.audit_rows <= 2_000_000 and 0 < args.sessions <= 100_000):
        raise SystemExit("bounded: 1..2,000,000 audit rows, 1..100,000 sessions")
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    pg = PostgresServer()
    with key_env():
        site_dir = make_site(work / "site", {"postgres.port": pg.port})
        site, inventory, secrets, pem = load_for_render(site_dir)
        site_value = SiteDir.load(site_dir)
        site_value.store  # noqa: B018 - opened while the key is in the environment
    files = render_host(site, inventory, "node1", secrets, pem, root=str(pg.dir))
    by_path = {f.path: f for f in files}
    pg.files = {f.path.lstrip("/"): (f.content, f.mode) for f in files
                if f.path.startswith("/etc/postgresql/")}
    pg.hba = by_path[f"{CONF_DIR}/pg_hba.conf"].content.decode()
    pg.conf_lines = [f"include '{{dir}}{CONF_DIR}/conf.d/60-cmdop.conf'"]
    for f in files:
        if f.path.startswith(("/etc/cmdop-backup/", "/etc/cmdop/")):
            dest = pg.dir / f.path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.content)
            dest.chmod(f.mode)
    figures: dict[str, float] = {}
    with pg:
        pg.psql(by_path[f"{CONF_DIR}/cmdop-roles.sql"].content.decode())
        for role, secret in (("cmdop_audit_admin", "postgres_password_audit_admin"),
                             ("cmdop_admin", "postgres_password_admin")):
            pg.psql(f"ALTER ROLE {role} PASSWORD '{scram_sha256_verifier(secrets[secret])}'")
        for step in (["migrate", "--database", "default", "--noinput"],
                     ["migrate", "--database", "audit", "--noinput"],
                     ["audit_grants", "cmdop_app"]):
            _server(pg, step)
        _server(pg, ["bootstrap_owner", "--email", "o@example.com", "--workspace", "acme"],
                "a-long-enough-owner-password\n")
        code = GENERATE.replace("SESSIONS", str(args.sessions)).replace("ROWS",
                                                                        str(args.audit_rows))
        _timed("generate", figures, _server, pg, ["shell", "-c", code])
        before = _counts(pg)
        env = {"PATH": f"{pg.bindir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
        script = pg.dir / "etc/cmdop-backup/cmdop-backup"
        dumps = work / "db"
        _timed("dump (database host)", figures, lambda: subprocess.run(
            ["bash", str(script), str(dumps)], env=env, check=True, timeout=1800,
            stdout=subprocess.DEVNULL))
        plain, archive = work / "archive.tar", work / "site.cmdop-backup"
        _timed("tar + seal (this machine)", figures, lambda: (
            backup._write_tar(plain, site_value, dumps, "bench", skip=set()),
            site_value.store.seal_file(plain, archive)))
        opened = work / "opened.tar"
        _timed("open archive", figures, site_value.store.open_sealed, archive, opened)
        passfile = pg.dir / "etc/cmdop-backup/pgpass"
        restore_env = env | {"PGPASSFILE": str(passfile), "PGSSLMODE": "verify-full",
                             "PGSSLROOTCERT": str(pg.dir / "etc/postgresql/tls/ca.crt"),
                             "PGHOST": "127.0.0.1", "PGPORT": str(pg.port)}

        def restore() -> None:
            for dump, db, role in (("app", "cmdop", "cmdop_admin"),
                                   ("audit", "cmdop_audit", "cmdop_audit_admin")):
                subprocess.run([str(pg.bindir / "pg_restore"), "--clean", "--if-exists",
                                "--no-owner", "--no-acl", "--single-transaction",
                                "-U", role, "-d", db, str(dumps / f"{dump}.dump")],
                               env=restore_env, check=True, timeout=1800)
            _server(pg, ["audit_grants", "cmdop_app"])

        _timed("pg_restore both + audit_grants", figures, restore)
        verify = _timed("audit_verify", figures, _server, pg, ["audit_verify"])
        after = _counts(pg)
    size = {p.name: p.stat().st_size for p in (dumps / "app.dump", dumps / "audit.dump",
                                               archive)}
    print(f"site: {args.audit_rows} audit rows, {args.sessions} sessions, 20 machines "
          f"(generated in {figures.pop('generate'):.1f} s)")
    for label, seconds in figures.items():
        print(f"  {label:<32} {seconds:6.2f} s")
    print("  sizes: " + ", ".join(f"{name} {b / 1e6:.1f} MB" for name, b in size.items()))
    print(f"  row counts equal after restore: {before == after} {after}")
    print(f"  audit_verify: {verify.strip().splitlines()[-1] if verify.strip() else '(silent)'}")


if __name__ == "__main__":
    main()
