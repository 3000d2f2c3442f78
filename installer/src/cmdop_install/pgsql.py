"""The SQL the installer sends to PostgreSQL, composed with ``psycopg.sql``: role and database
names go in as quoted literals or identifiers, never pasted in with f-strings.

psycopg is imported inside each function: the CLI imports this module and starts without it.
"""

from __future__ import annotations

from collections.abc import Mapping

# roles of render.postgres_names that roles.sql creates, and who each admin login acts as
ROLES = ("owner", "app", "blue", "green", "admin", "audit_owner", "audit_admin")
ACTS_AS = (("admin", "owner"), ("audit_admin", "audit_owner"))
# the app's logins: members of "app" (rows only), never of the owner, acting as nobody else
APP_LOGINS = ("blue", "green")


def set_password(role: str, verifier: str) -> str:
    """``ALTER ROLE`` with a SCRAM verifier (the password itself never reaches the server)."""
    from psycopg import sql

    return (
        sql.SQL("ALTER ROLE {} PASSWORD {};\n")
        .format(sql.Identifier(role), sql.Literal(verifier))
        .as_string()
    )


def clear_password(role: str) -> str:
    """``ALTER ROLE … PASSWORD NULL``: the role can no longer log in with any password."""
    from psycopg import sql

    return sql.SQL("ALTER ROLE {} PASSWORD NULL;\n").format(sql.Identifier(role)).as_string()


def password_md5(role: str) -> str:
    """The md5 of ``role``'s stored verifier: compared with ours, the verifier never travels
    back."""
    from psycopg import sql

    return (
        sql.SQL("SELECT md5(rolpassword) FROM pg_authid WHERE rolname = {}")
        .format(sql.Literal(role))
        .as_string()
    )


def roles_check(pg: Mapping) -> str:
    """One query, ``t`` when every role, database and login setting roles.sql makes exists,
    the app's logins cannot act as the owner, and the audit database belongs to its own
    owner (``pg``: render.postgres_names)."""
    from psycopg import sql

    def listed(names) -> sql.Composable:
        return sql.SQL(", ").join(sql.Literal(n) for n in names)

    settings = sql.SQL(" OR ").join(
        sql.SQL("(r.rolname = {} AND {} = ANY (s.setconfig))").format(
            sql.Literal(pg[login]), sql.Literal(f"role={pg[acts_as]}")
        )
        for login, acts_as in ACTS_AS
    )
    return (
        sql.SQL(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname IN ({roles})) = {role_count}"
            " AND (SELECT count(*) FROM pg_database WHERE datname IN ({databases}))"
            " = {database_count}"
            " AND (SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r"
            " ON r.oid = s.setrole WHERE {settings}) = {setting_count}"
            " AND (SELECT pg_get_userbyid(datdba) FROM pg_database"
            " WHERE datname = {audit_database}) = {audit_owner}"
            " AND (SELECT bool_and(pg_has_role(l, {app}, 'MEMBER')"
            " AND NOT pg_has_role(l, {owner}, 'MEMBER')) FROM unnest(ARRAY[{logins}]::name[]) l)"
            " AND NOT EXISTS (SELECT FROM pg_db_role_setting s JOIN pg_roles r"
            " ON r.oid = s.setrole WHERE r.rolname IN ({logins}))"
        )
        .format(
            roles=listed(pg[r] for r in ROLES),
            role_count=sql.Literal(len(ROLES)),
            databases=listed(pg["databases"]),
            database_count=sql.Literal(len(pg["databases"])),
            settings=settings,
            setting_count=sql.Literal(len(ACTS_AS)),
            audit_database=sql.Literal(pg["audit_database"]),
            audit_owner=sql.Literal(pg["audit_owner"]),
            app=sql.Literal(pg["app"]),
            owner=sql.Literal(pg["owner"]),
            logins=listed(pg[login] for login in APP_LOGINS),
        )
        .as_string()
    )
