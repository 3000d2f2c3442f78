"""Redis from Debian's package with our redis.conf and users.acl: TLS only, ACLs, no plain port."""

from pyinfra.api import deploy
from pyinfra.operations import systemd

from cmdop_install.deploys.common import any_changed, put_files
from cmdop_install.deploys.ops import redis_tls_loaded, redis_users_loaded
from cmdop_install.render import Paths

PATHS = Paths()


def _installer_command(paths: Paths, command: str, what: str) -> str:
    """``command`` as the installer's user (ACL LOAD and CONFIG SET only), on the root-only
    socket. Its password goes from the root-only file (the user on line 2, the password on
    line 3) into redis-cli's environment, never into an argv. Redis answers OK or an error
    (which changes nothing: ACL LOAD and CONFIG SET are all or nothing)."""
    auth = f"{paths.redis}/cmdop-acl-load.auth"
    return (f'out=$(REDISCLI_AUTH="$(sed -n 3p {auth})" redis-cli --no-auth-warning '
            f'--user "$(sed -n 2p {auth})" -s {paths.redis_acl_socket} {command} 2>&1); '
            f'[ "$out" = OK ] || {{ echo "redis {what}: $out" >&2; exit 1; }}')


def acl_load_command(paths: Paths) -> str:
    return _installer_command(paths, "ACL LOAD", "ACL LOAD")


def tls_files(paths: Paths) -> list[str]:
    return [f"{paths.redis_tls}/redis.crt", f"{paths.redis_tls}/redis.key",
            f"{paths.redis_tls}/ca.crt"]


def tls_reload_command(paths: Paths) -> str:
    """Redis reads its certificate, key and CA files anew when CONFIG SET names them, even
    by the same paths (they are VOLATILE configs): new connections get the new ones, open
    connections keep theirs. One CONFIG SET, so the certificate and its key change together."""
    crt, key, ca = tls_files(paths)
    return _installer_command(
        paths, f"CONFIG SET tls-cert-file {crt} tls-key-file {key} tls-ca-cert-file {ca}",
        "CONFIG SET tls-*")


@deploy("Redis")
def redis() -> None:
    # Debian's /etc/redis is setgid redis (2770); a sub-folder inherits the bit.
    put_files("/etc/redis/tls", {"/etc/redis/tls": ("redis", "redis", "2750")})
    conf = put_files("/etc/redis", names=("redis.conf", "openssl-cmdop.cnf"))
    put_files("/etc/redis", names=("users.acl",))
    # before ACL LOAD: a rotation of its own password changes it while both are in users.acl
    put_files("/etc/redis", names=("cmdop-acl-load.auth",))
    unit = put_files(
        "/etc/systemd/system/redis-server.service.d",
        {"/etc/systemd/system/redis-server.service.d": ("root", "root", "755")},
    )
    systemd.daemon_reload(name="Reload systemd (redis drop-in)", _if=any_changed(unit), _sudo=True)
    systemd.service(
        name="Redis enabled and running",
        service="redis-server",
        running=True,
        enabled=True,
        _sudo=True,
    )
    # redis.conf and the unit are read at start: a restart (a few ms of refused connects,
    # which clients retry), which reads users.acl and the certificates as well
    restart = any_changed(conf + unit)
    systemd.service(
        name="Restart Redis (configuration changed)",
        service="redis-server",
        restarted=True,
        _if=restart,
        _sudo=True,
    )
    # users.acl alone: ACL LOAD, no restart. A rotation lists a user's old and new password
    # here while its clients move; Redis 7.0 closes every logged-in connection on ACL LOAD
    # (later releases keep them), which our clients reopen with their one retry.
    redis_users_loaded(
        name="Redis uses the current users.acl (ACL LOAD, no restart)",
        users=f"{PATHS.redis}/users.acl",
        loaded=f"{PATHS.redis}/users.acl.loaded",
        acl_load=acl_load_command(PATHS),
        restarted=restart,
        _sudo=True,
    )
    # the certificates alone (a leaf or CA rotation): CONFIG SET, no restart; after
    # ACL LOAD, which gives the installer's user CONFIG SET on a site that had it not
    redis_tls_loaded(
        name="Redis serves the current certificates (CONFIG SET, no restart)",
        files=tls_files(PATHS),
        loaded=f"{PATHS.redis}/tls.loaded",
        reload=tls_reload_command(PATHS),
        restarted=restart,
        _sudo=True,
    )
