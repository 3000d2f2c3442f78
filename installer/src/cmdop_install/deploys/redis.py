"""Redis from Debian's package with our redis.conf and users.acl: TLS only, ACLs, no plain port."""

from pyinfra.api import deploy
from pyinfra.operations import systemd

from cmdop_install.deploys.common import any_changed, put_files
from cmdop_install.deploys.ops import redis_users_loaded
from cmdop_install.render import Paths

PATHS = Paths()


def acl_load_command(paths: Paths) -> str:
    """ACL LOAD as the user that may do nothing else, on the root-only socket. Its password
    goes from the root-only file (the user on line 2, the password on line 3) into redis-cli's
    environment, never into an argv. Redis answers OK or an error (a bad users.acl changes
    nothing: ACL LOAD is all or nothing)."""
    auth = f"{paths.redis}/cmdop-acl-load.auth"
    return (f'out=$(REDISCLI_AUTH="$(sed -n 3p {auth})" redis-cli --no-auth-warning '
            f'--user "$(sed -n 2p {auth})" -s {paths.redis_acl_socket} ACL LOAD 2>&1); '
            '[ "$out" = OK ] || { echo "redis ACL LOAD: $out" >&2; exit 1; }')


@deploy("Redis")
def redis() -> None:
    # Debian's /etc/redis is setgid redis (2770); a sub-folder inherits the bit.
    tls = put_files("/etc/redis/tls", {"/etc/redis/tls": ("redis", "redis", "2750")})
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
    # redis.conf, the certificates and the unit are read at start: a restart (a few ms of
    # refused connects, which clients retry), which reads users.acl as well
    restart = any_changed(tls + conf + unit)
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
