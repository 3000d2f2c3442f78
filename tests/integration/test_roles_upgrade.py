"""Our rendered cmdop-roles.sql applied to the roles and grants an earlier release left
(416222f: the app's logins were members of the owner and acted as it, and audit_grants gave
the owner the app's rights on the audit log), on a real Postgres.

The release that site runs keeps serving while a deploy goes on, until the new release's
migrations, audit_grants and switch: its connections open before, and the ones it opens
after roles.sql, must still read and write rows and add audit rows. And the logins must
end with data rights only, as on a site deployed fresh.
"""

from __future__ import annotations

import psycopg
import pytest
from cmdop_install.render import load_for_render, render_host

from tests.support.services import PostgresServer
from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.integration

# what 416222f's roles.sql, its migrations (as the logins, acting as the owner) and its
# audit_grants (to the owner) left, in the shape of the real audit table and function
EARLIER_SITE = """
CREATE ROLE cmdop_owner NOLOGIN;
CREATE ROLE cmdop_blue LOGIN IN ROLE cmdop_owner;
CREATE ROLE cmdop_green LOGIN IN ROLE cmdop_owner;
CREATE ROLE cmdop_audit_owner NOLOGIN;
CREATE ROLE cmdop_audit_admin LOGIN IN ROLE cmdop_audit_owner;
ALTER ROLE cmdop_blue SET role = 'cmdop_owner';
ALTER ROLE cmdop_green SET role = 'cmdop_owner';
ALTER ROLE cmdop_audit_admin SET role = 'cmdop_audit_owner';
CREATE DATABASE cmdop OWNER cmdop_owner;
CREATE DATABASE cmdop_audit OWNER cmdop_audit_owner;
REVOKE ALL ON DATABASE cmdop FROM PUBLIC;
REVOKE ALL ON DATABASE cmdop_audit FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE cmdop TO cmdop_owner;
GRANT CONNECT, TEMPORARY ON DATABASE cmdop_audit TO cmdop_audit_owner;
GRANT CONNECT ON DATABASE cmdop_audit TO cmdop_owner;
\\connect cmdop
SET ROLE cmdop_owner;
CREATE TABLE machines (id bigserial PRIMARY KEY, name text);
\\connect cmdop_audit
SET ROLE cmdop_audit_owner;
CREATE TABLE audit_event (id bigserial PRIMARY KEY, action text);
CREATE TABLE audit_retention (id int PRIMARY KEY, days int);
CREATE FUNCTION audit_purge() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 0';
REVOKE ALL ON FUNCTION audit_purge() FROM PUBLIC;
GRANT SELECT, INSERT ON audit_event TO cmdop_owner;
GRANT USAGE ON SEQUENCE audit_event_id_seq TO cmdop_owner;
GRANT SELECT ON audit_retention TO cmdop_owner;
GRANT EXECUTE ON FUNCTION audit_purge() TO cmdop_owner;
"""


@pytest.fixture
def earlier_site(tmp_path):
    with key_env():
        make_site(tmp_path / "site")
        site, inventory, secrets, pem = load_for_render(tmp_path / "site")
    files = render_host(site, inventory, "node1", secrets, pem)
    (roles,) = [f for f in files if f.path.endswith("/cmdop-roles.sql")]
    with PostgresServer() as pg:
        pg.psql(EARLIER_SITE)
        yield pg, roles.content.decode()


def _login(pg, dbname: str) -> psycopg.Connection:
    """The serving release's connection: its login, trusted over loopback here (the
    rendered pg_hba.conf's TLS and passwords are test_hardened_daemons' subject)."""
    return psycopg.connect(pg.dsn(dbname, "cmdop_blue"), autocommit=True)


def _serves(conn: psycopg.Connection) -> None:
    """What the serving release does on each database: rows, and audit rows added."""
    if conn.info.dbname == "cmdop":
        conn.execute("INSERT INTO machines (name) VALUES ('web1')")
        assert conn.execute("SELECT count(*) FROM machines").fetchone() != (0,)
    else:
        conn.execute("INSERT INTO audit_event (action) VALUES ('signed_in')")
        conn.execute("SELECT days FROM audit_retention")
        conn.execute("SELECT audit_purge()")


def test_the_serving_release_keeps_working_and_its_logins_end_with_data_rights_only(
        earlier_site) -> None:
    pg, roles_sql = earlier_site
    opened_before = [_login(pg, "cmdop"), _login(pg, "cmdop_audit")]
    for conn in opened_before:
        _serves(conn)
    pg.psql(roles_sql)
    pg.psql(roles_sql)  # a rerun changes nothing and fails on nothing
    for conn in opened_before:
        _serves(conn)
        conn.close()
    for dbname in ("cmdop", "cmdop_audit"):
        with _login(pg, dbname) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("cmdop_blue",)
            _serves(conn)
            for statement in ("SET ROLE cmdop_owner", "DROP TABLE machines" if dbname ==
                              "cmdop" else "UPDATE audit_event SET action = 'forged'"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
