"""Our rendered Postgres and Redis configs, run by the real daemons, with our certificates.

Every file a daemon reads here comes from ``render_host(..., root=<scratch dir>)``: the
same templates and the same certificates a host receives, only rooted in a scratch
folder. The assertions are the security model's: TLS 1.3 with verify-full succeeds,
TLS 1.2 and plaintext are refused, wrong passwords and the Redis default user are
refused, the app's Redis user cannot administer the server.
"""

from __future__ import annotations

import socket
import ssl
import subprocess

import psycopg
import pytest
import redis
from cmdop_install.hashing import scram_sha256_verifier
from cmdop_install.render import load_for_render, render_host
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.services import PostgresServer, RedisServer
from tests.support.sites import key_env, make_site, plain_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_and_site(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    pg = PostgresServer()
    with key_env():
        make_site(site_dir, {"postgres.port": pg.port})
        site, inventory, secrets, pem = load_for_render(site_dir)
    files = render_host(site, inventory, "node1", secrets, pem, root=str(pg.dir))
    by_path = {f.path: f for f in files}
    conf_dir = "/etc/postgresql/15/main"
    pg.files = {f.path.lstrip("/"): (f.content, f.mode) for f in files
                if f.path.startswith("/etc/postgresql/")}
    pg.hba = by_path[f"{conf_dir}/pg_hba.conf"].content.decode()
    pg.conf_lines = [f"include '{{dir}}{conf_dir}/conf.d/60-cmdop.conf'"]
    with pg:
        pg.psql(by_path[f"{conf_dir}/cmdop-roles.sql"].content.decode())
        verifier = scram_sha256_verifier(secrets["postgres_password_blue"])
        pg.psql(f"ALTER ROLE cmdop_blue PASSWORD '{verifier}'")  # via stdin, never argv
        admin = scram_sha256_verifier(secrets["postgres_password_audit_admin"])
        pg.psql(f"ALTER ROLE cmdop_audit_admin PASSWORD '{admin}'")
        yield pg, secrets, pg.dir / "etc/postgresql/tls/ca.crt"


def _pg_connect(pg, ca, **overrides):
    params = {"host": "127.0.0.1", "port": pg.port, "dbname": "cmdop", "user": "cmdop_blue",
              "sslmode": "verify-full", "sslrootcert": str(ca), "connect_timeout": 5}
    params.update(overrides)
    return psycopg.connect(**params)


def test_postgres_tls13_verify_full_login_acts_as_owner_role(pg_and_site):
    pg, secrets, ca = pg_and_site
    with _pg_connect(pg, ca, password=secrets["postgres_password_blue"]) as conn:
        (user,) = conn.execute("SELECT current_user").fetchone()
        version = pg.psql("SELECT s.version FROM pg_stat_ssl s JOIN pg_stat_activity a "
                          "USING (pid) WHERE a.usename = 'cmdop_blue'").strip()
    assert version == "TLSv1.3"  # as the server saw it
    assert user == "cmdop_owner"  # ALTER ROLE … SET role: objects belong to the owner


def test_the_audit_database_belongs_to_a_role_the_app_cannot_become(pg_and_site):
    """The audit log is append-only for the app: its tables belong to the audit owner (made by
    the audit admin's migrations); the app gets INSERT and SELECT (audit_grants) only."""
    pg, secrets, ca = pg_and_site
    with _pg_connect(pg, ca, dbname="cmdop_audit", user="cmdop_audit_admin",
                     password=secrets["postgres_password_audit_admin"]) as admin:
        admin.execute("CREATE TABLE probe (id int)")  # a migration, as the audit owner
        owner = admin.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'probe'")
        assert owner.fetchone() == ("cmdop_audit_owner",)
        admin.execute("GRANT SELECT, INSERT ON probe TO cmdop_owner")  # what audit_grants does
        admin.commit()
    with _pg_connect(pg, ca, dbname="cmdop_audit",
                     password=secrets["postgres_password_blue"]) as app:
        app.autocommit = True
        app.execute("INSERT INTO probe VALUES (1)")
        assert app.execute("SELECT count(*) FROM probe").fetchone() == (1,)
        for statement in ("UPDATE probe SET id = 2", "DELETE FROM probe", "TRUNCATE probe",
                          "DROP TABLE probe", "ALTER TABLE probe ADD COLUMN x int",
                          "CREATE TABLE mine (id int)", "SET ROLE cmdop_audit_owner"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)
    with pytest.raises(psycopg.OperationalError, match="pg_hba"):  # only its own database
        _pg_connect(pg, ca, dbname="cmdop", user="cmdop_audit_admin",
                    password=secrets["postgres_password_audit_admin"]).close()


# Each refusal names its own reason: a case must fail for the reason it is about (a wrong
# password refused only because TLS broke first proves nothing about passwords).
@pytest.mark.parametrize("overrides, refusal", [
    pytest.param({"ssl_max_protocol_version": "TLSv1.2"}, "protocol version",
                 id="TLS 1.2-only client"),
    pytest.param({"sslmode": "disable"}, r"pg_hba\.conf rejects .*no encryption", id="no TLS"),
    pytest.param({"password": "wrong-password-0123456789abcdefXYZ"},
                 'password authentication failed for user "cmdop_blue"', id="wrong password"),
    pytest.param({"user": "cmdop_green"},
                 'password authentication failed for user "cmdop_green"',
                 id="idle rotation role without a password"),
    pytest.param({"user": "postgres", "dbname": "postgres"},
                 r'pg_hba\.conf rejects .*user "postgres"', id="superuser over the network"),
    pytest.param({"dbname": "postgres"}, r'pg_hba\.conf rejects .*user "cmdop_blue", '
                 'database "postgres"', id="the app role to another database"),
    pytest.param({"host": "localhost", "hostaddr": "127.0.0.1"},
                 'does not match host name "localhost"', id="name not in the certificate"),
])
def test_postgres_refuses(pg_and_site, overrides, refusal):
    pg, secrets, ca = pg_and_site
    params = {"password": secrets["postgres_password_blue"], **overrides}
    with pytest.raises(psycopg.OperationalError, match=refusal) as err:
        _pg_connect(pg, ca, **params).close()
    assert secrets["postgres_password_blue"] not in str(err.value)


def test_postgres_scram_verifier_is_what_was_stored(pg_and_site):
    pg, secrets, _ = pg_and_site
    stored = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'cmdop_blue'").strip()
    assert stored.startswith("SCRAM-SHA-256$4096:")
    assert secrets["postgres_password_blue"] not in stored


# --- Redis --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_and_site(tmp_path_factory):
    site_dir = tmp_path_factory.mktemp("site")
    server = RedisServer()
    with key_env():
        # Centrifugo on (any existing file stands in for its binary): its ACL user exists
        make_site(site_dir, {"redis.port": server.port, "centrifugo.binary": "/bin/true"},
                  centrifugo=True)
        site, inventory, secrets, pem = load_for_render(site_dir)
        for client in ("app-node1", "centrifugo-node1"):
            plain_key(site_dir, client)
    files = render_host(site, inventory, "node1", secrets, pem, root=str(server.dir))
    server.files = {f.path.lstrip("/"): (f.content, f.mode) for f in files
                    if f.path.startswith("/etc/redis/")}
    server.conf = next(f for f in files if f.path == "/etc/redis/redis.conf").content.decode()
    server.env = {"OPENSSL_CONF": f"{server.dir}/etc/redis/openssl-cmdop.cnf"}
    with server:
        yield server, secrets, server.dir / "etc/redis/tls", site_dir


def _redis(server, tls_dir, site_dir, **overrides):
    params = {
        "host": "127.0.0.1", "port": server.port, "username": "testsite-app",
        "ssl": True, "ssl_ca_certs": str(tls_dir / "ca.crt"), "ssl_cert_reqs": "required",
        "ssl_check_hostname": True, "ssl_min_version": ssl.TLSVersion.TLSv1_3,
        # the control plane's client certificate (tls-auth-clients yes)
        "ssl_certfile": str(site_dir / "pki/app-node1.crt"),
        "ssl_keyfile": str(site_dir / "plain-app-node1.key"),
        "socket_timeout": 5, "socket_connect_timeout": 5,
        "retry": Retry(NoBackoff(), 0),  # a refusal is the answer: do not retry it
    }
    params.update(overrides)
    return redis.Redis(**params)


def test_redis_app_user_over_tls13_within_its_prefix(redis_and_site):
    server, secrets, tls_dir, site_dir = redis_and_site
    client = _redis(server, tls_dir, site_dir, password=secrets["redis_password_app"])
    assert client.ping()
    client.set("testsite:work", "1")
    assert client.get("testsite:work") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("other:key", "1")  # outside the ACL key pattern


@pytest.mark.parametrize("command", [
    ("CONFIG", "GET", "*"), ("CONFIG", "SET", "dir", "/srv"), ("FLUSHALL",),
    ("DEBUG", "SLEEP", "0"), ("ACL", "LIST"), ("SHUTDOWN",), ("KEYS", "*"),
])
def test_redis_app_user_cannot_administer(redis_and_site, command):
    server, secrets, tls_dir, site_dir = redis_and_site
    client = _redis(server, tls_dir, site_dir, password=secrets["redis_password_app"])
    # DEBUG is refused twice: by the ACL and by enable-debug-command no (which answers first)
    with pytest.raises(redis.exceptions.ResponseError, match="permission|not allowed"):
        client.execute_command(*command)


@pytest.mark.parametrize("overrides, error", [
    ({"password": "wrong-password-0123456789abcdefXYZ"}, redis.exceptions.AuthenticationError),
    ({"username": "default", "password": "anything-at-all-0123456789"},
     redis.exceptions.AuthenticationError),
    ({"username": None, "password": None}, redis.exceptions.AuthenticationError),
    ({"ssl_certfile": None, "ssl_keyfile": None}, redis.exceptions.ConnectionError),
    ({"ssl": False}, redis.exceptions.ConnectionError),
])
def test_redis_refuses(redis_and_site, overrides, error):
    server, secrets, tls_dir, site_dir = redis_and_site
    params = {"password": secrets["redis_password_app"], **overrides}
    if not params.get("ssl", True):
        params = {k: v for k, v in params.items() if not k.startswith("ssl")} | {"ssl": False}
    with pytest.raises(error) as err:
        _redis(server, tls_dir, site_dir, **params).ping()
    assert secrets["redis_password_app"] not in str(err.value)


def _handshake(port: int, ca, *, max_version=None, server_name="127.0.0.1",
               cert=None, groups=None) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    if max_version:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = max_version
    if cert:
        ctx.load_cert_chain(*cert)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        return tls.version()


def test_redis_refuses_tls12_handshake(redis_and_site):
    server, _, tls_dir, site_dir = redis_and_site
    cert = (site_dir / "pki/app-node1.crt", site_dir / "plain-app-node1.key")
    assert _handshake(server.port, tls_dir / "ca.crt", cert=cert) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        _handshake(server.port, tls_dir / "ca.crt", cert=cert,
                   max_version=ssl.TLSVersion.TLSv1_2)


@pytest.mark.parametrize("group, accepted", [("X25519", True), ("P-384", True),
                                             ("X448", False), ("P-521", False)])
def test_redis_key_exchange_groups_are_limited(redis_and_site, group, accepted):
    server, _, tls_dir, site_dir = redis_and_site
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_3",
         "-groups", group, "-CAfile", str(tls_dir / "ca.crt"),
         "-cert", str(site_dir / "pki/app-node1.crt"),
         "-key", str(site_dir / "plain-app-node1.key"), "-verify_return_error", "-brief"],
        input="", capture_output=True, text=True, timeout=10, check=False)
    assert ("Protocol version: TLSv1.3" in done.stderr) is accepted, done.stderr


def test_redis_centrifugo_user_gets_its_prefix_scripts_and_pubsub_only(redis_and_site):
    server, secrets, tls_dir, site_dir = redis_and_site
    client = _redis(server, tls_dir, site_dir, username="testsite-centrifugo",
                    password=secrets["redis_password_centrifugo"],
                    ssl_certfile=str(site_dir / "pki/centrifugo-node1.crt"),
                    ssl_keyfile=str(site_dir / "plain-centrifugo-node1.key"))
    # what its Redis engine does: Lua on its keys, streams, hashes, publish on its channels
    assert client.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, "centrifugo.k", "v")
    client.xadd("centrifugo.stream.ch", {"d": "x"})
    client.publish("centrifugo.ch", "hello")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.get("testsite:work")  # the app's keys are not Centrifugo's
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("CONFIG", "GET", "*")
