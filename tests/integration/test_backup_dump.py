"""cmdop-backup as rendered for the database host, run against the real Postgres with our
rendered pg_hba.conf and certificates: both databases dumped as their admin logins over
TLS (verify-full) with the password from the passfile alone, checksummed, private, and the
timer's retention keeping the newest N."""

from __future__ import annotations

import hashlib
import stat
import subprocess
from pathlib import Path

import pytest
from cmdop_install.hashing import scram_sha256_verifier
from cmdop_install.render import load_for_render, render_host

from tests.support.services import PostgresServer
from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.integration

CONF_DIR = "/etc/postgresql/15/main"


@pytest.fixture(scope="module")
def backup_host(tmp_path_factory):
    """Postgres with the site's rendered files, some rows in each database, and the
    rendered cmdop-backup files rooted in the same scratch folder."""
    site_dir = tmp_path_factory.mktemp("site")
    top = tmp_path_factory.mktemp("backups")
    pg = PostgresServer()
    with key_env():
        make_site(site_dir, {"postgres.port": pg.port, "backup.directory": str(top),
                             "backup.keep": 2})
        site, inventory, secrets, pem = load_for_render(site_dir)
    files = render_host(site, inventory, "node1", secrets, pem, root=str(pg.dir))
    by_path = {f.path: f for f in files}
    pg.files = {f.path.lstrip("/"): (f.content, f.mode) for f in files
                if f.path.startswith("/etc/postgresql/")}
    pg.hba = by_path[f"{CONF_DIR}/pg_hba.conf"].content.decode()
    pg.conf_lines = [f"include '{{dir}}{CONF_DIR}/conf.d/60-cmdop.conf'"]
    for f in files:
        if f.path.startswith("/etc/cmdop-backup/"):
            dest = pg.dir / f.path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.content)
            dest.chmod(f.mode)
    with pg:
        pg.psql(by_path[f"{CONF_DIR}/cmdop-roles.sql"].content.decode())
        for role, secret in (("cmdop_audit_admin", "postgres_password_audit_admin"),
                             ("cmdop_admin", "postgres_password_admin")):
            pg.psql(f"ALTER ROLE {role} PASSWORD '{scram_sha256_verifier(secrets[secret])}'")
        pg.psql("SET ROLE cmdop_owner; CREATE TABLE probe (v text); "
                "INSERT INTO probe VALUES ('app-row-1'), ('app-row-2')", dbname="cmdop")
        pg.psql("SET ROLE cmdop_audit_owner; CREATE TABLE trail (v text); "
                "INSERT INTO trail VALUES ('audit-row-1')", dbname="cmdop_audit")
        yield pg, top, by_path["/etc/cmdop-backup/pgpass"].content


def _run(pg: PostgresServer, *args: str) -> subprocess.CompletedProcess[str]:
    script = pg.dir / "etc/cmdop-backup/cmdop-backup"
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={"PATH": f"{pg.bindir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"})


def _restored_sql(pg: PostgresServer, dump: Path) -> str:
    return subprocess.run([str(pg.bindir / "pg_restore"), "-f", "-", str(dump)],
                          capture_output=True, text=True, check=True, timeout=60).stdout


def test_both_databases_dumped_over_tls_as_their_admins(backup_host, tmp_path):
    pg, _, passfile = backup_host
    dest = tmp_path / "db"
    done = _run(pg, str(dest))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    for name in ("app.dump", "audit.dump", "SHA256SUMS"):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o600, name
    sums = dict(reversed(line.split("  ")) for line in (dest / "SHA256SUMS").read_text()
                .splitlines())
    for name in ("app.dump", "audit.dump"):
        assert sums[name] == hashlib.sha256((dest / name).read_bytes()).hexdigest()
    app, audit = _restored_sql(pg, dest / "app.dump"), _restored_sql(pg, dest / "audit.dump")
    assert "app-row-1\napp-row-2" in app and "audit-row-1" not in app
    assert "audit-row-1" in audit and "app-row-1" not in audit
    # the logins came in over TLS 1.3 (pg_hba has no other way for them), and the password
    # is in the passfile, never in the script
    script = (pg.dir / "etc/cmdop-backup/cmdop-backup").read_text()
    password = passfile.decode().splitlines()[1].rsplit(":", 1)[1]
    assert password not in script
    assert "verify-full" in script


def test_a_wrong_password_in_the_passfile_fails_and_leaves_nothing(backup_host, tmp_path):
    pg, top, passfile = backup_host
    path = pg.dir / "etc/cmdop-backup/pgpass"
    wrong = [line if line.startswith("#") else line.rsplit(":", 1)[0] + ":not-the-password"
             for line in passfile.decode().splitlines()]
    path.write_text("\n".join(wrong) + "\n")
    try:
        before = sorted(top.iterdir())
        done = _run(pg)
        assert done.returncode != 0
        assert "password authentication failed" in done.stderr
        assert sorted(top.iterdir()) == before  # no half-made backup
    finally:
        path.write_bytes(passfile)


def test_the_timer_run_keeps_the_newest_n(backup_host):
    pg, top, _ = backup_host
    for old in ("20200101T000000Z", "20210101T000000Z"):
        (top / f"testsite-{old}").mkdir(mode=0o700)
    done = _run(pg)
    assert done.returncode == 0, done.stderr
    made = Path(done.stdout.strip())
    assert sorted(p.name for p in top.iterdir()) == ["testsite-20210101T000000Z", made.name]
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert "app-row-2" in _restored_sql(pg, made / "app.dump")


def test_cmdop_restore_puts_both_databases_back_and_the_app_keeps_its_rights(backup_host,
                                                                            tmp_path):
    pg, _, _ = backup_host
    dest = tmp_path / "db"
    assert _run(pg, str(dest)).returncode == 0
    pg.psql("SET ROLE cmdop_owner; DELETE FROM probe; INSERT INTO probe VALUES ('later')",
            dbname="cmdop")
    pg.psql("SET ROLE cmdop_audit_owner; INSERT INTO trail VALUES ('later')",
            dbname="cmdop_audit")
    restore = pg.dir / "etc/cmdop-backup/cmdop-restore"
    done = subprocess.run(["bash", str(restore), str(dest)], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={"PATH": f"{pg.bindir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0, done.stderr
    assert pg.psql("SELECT v FROM probe ORDER BY v", dbname="cmdop").split() == [
        "app-row-1", "app-row-2"]
    assert pg.psql("SELECT v FROM trail", dbname="cmdop_audit").split() == ["audit-row-1"]
    owners = pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'probe'",
                     dbname="cmdop").split()
    assert owners == ["cmdop_owner"]  # made as the owner, so its default privileges apply
    rights = pg.psql("SELECT has_table_privilege('cmdop_app', 'probe', 'INSERT'), "
                     "has_table_privilege('cmdop_app', 'probe', 'TRUNCATE')", dbname="cmdop")
    assert rights.strip() == "t|f"


def test_cmdop_restore_refuses_a_changed_dump_and_leaves_the_databases(backup_host, tmp_path):
    pg, _, _ = backup_host
    dest = tmp_path / "db"
    assert _run(pg, str(dest)).returncode == 0
    data = bytearray((dest / "app.dump").read_bytes())
    data[len(data) // 2] ^= 1
    (dest / "app.dump").write_bytes(bytes(data))
    before = pg.psql("SELECT v FROM probe ORDER BY v", dbname="cmdop")
    restore = pg.dir / "etc/cmdop-backup/cmdop-restore"
    done = subprocess.run(["bash", str(restore), str(dest)], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={"PATH": f"{pg.bindir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    assert done.returncode != 0 and "app.dump: FAILED" in done.stdout + done.stderr
    assert pg.psql("SELECT v FROM probe ORDER BY v", dbname="cmdop") == before
