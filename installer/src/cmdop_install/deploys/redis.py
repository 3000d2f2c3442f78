"""Redis from Debian's package with our redis.conf and users.acl: TLS only, ACLs, no plain port."""

from pyinfra.api import deploy
from pyinfra.operations import systemd

from cmdop_install.deploys.common import any_changed, put_files


@deploy("Redis")
def redis() -> None:
    # Debian's /etc/redis is setgid redis (2770); a sub-folder inherits the bit.
    tls = put_files("/etc/redis/tls", {"/etc/redis/tls": ("redis", "redis", "2750")})
    conf = put_files("/etc/redis")
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
    # redis.conf and users.acl are read at start; a restart is a few ms of refused connects,
    # which clients retry. Secret rotation uses ACL SETUSER instead (no restart).
    systemd.service(
        name="Restart Redis (configuration changed)",
        service="redis-server",
        restarted=True,
        _if=any_changed(tls + conf + unit),
        _sudo=True,
    )
