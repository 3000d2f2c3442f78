"""The SQL the installer sends (cmdop_install.pgsql), run by a real PostgreSQL: the roles
check answers ``t`` exactly when the site's rendered roles.sql has run, a password set from
a verifier is the one the md5 check recognises, names are quoted by psycopg."""

import hashlib

import pytest
from cmdop_install import pgsql, render
from cmdop_install.hashing import scram_sha256_verifier
from cmdop_install.render import load_for_render, render_host

from tests.support.services import PostgresServer
from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_and_site(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    with key_env():
        make_site(site_dir)
        site, inventory, secrets, pem = load_for_render(site_dir)
    files = render_host(site, inventory, "node1", secrets, pem)
    roles_sql = next(f for f in files if f.path.endswith("/cmdop-roles.sql")).content.decode()
    with PostgresServer() as pg:
        yield pg, render.postgres_names(site), roles_sql


def test_the_roles_check_is_true_only_once_roles_sql_has_run(pg_and_site) -> None:
    pg, names, roles_sql = pg_and_site
    check = pgsql.roles_check(names)
    assert pg.psql(check).strip() == "f"
    pg.psql(roles_sql)
    assert pg.psql(check).strip() == "t"
    pg.psql(f"GRANT {names['owner']} TO {names['green']}")
    assert pg.psql(check).strip() == "f"  # an app login that could act as the owner
    pg.psql(roles_sql)
    assert pg.psql(check).strip() == "t"
    pg.psql(f"ALTER ROLE {names['admin']} RESET role")
    assert pg.psql(check).strip() == "f"  # an admin login that would not act as the owner
    pg.psql(roles_sql)
    assert pg.psql(check).strip() == "t"


def test_a_password_set_from_its_verifier_is_recognised_by_its_md5(pg_and_site) -> None:
    pg, _, _ = pg_and_site
    pg.psql('CREATE ROLE "Odd ""name"" role" LOGIN')
    verifier = scram_sha256_verifier("correct horse", salt=b"0123456789abcdef")
    pg.psql(pgsql.set_password('Odd "name" role', verifier))
    expected = hashlib.md5(verifier.encode(), usedforsecurity=False).hexdigest()
    assert pg.psql(pgsql.password_md5('Odd "name" role')).strip() == expected
    assert pg.psql(pgsql.password_md5("nobody")).strip() == ""
