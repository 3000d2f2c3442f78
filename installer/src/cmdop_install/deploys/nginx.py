"""nginx in front of the control plane: TLS 1.3 only, our certificate, validated before reload."""

from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from cmdop_install.deploys.common import any_changed, put_files

DROPIN = "/etc/systemd/system/nginx.service.d"


@deploy("nginx")
def nginx() -> None:
    """Runs after the control-plane deploy, which creates group cmdop (gunicorn's socket)."""
    socket_access = server.user(
        name="nginx may reach the gunicorn socket",
        user="www-data",
        groups=["cmdop"],
        append=True,
        _sudo=True,
    )
    # Debian's default site serves plain HTTP content on port 80: not on our hosts.
    default = files.link(
        name="No default site", path="/etc/nginx/sites-enabled/default", present=False, _sudo=True
    )
    tls = put_files("/etc/nginx/tls", {"/etc/nginx/tls": ("root", "root", "700")})
    # our main nginx.conf in place of Debian's (its events block sizes the fleet nginx holds)
    main_conf = put_files("/etc/nginx", names=("nginx.conf",))
    conf = put_files("/etc/nginx/conf.d")
    changed = any_changed([default, *tls, *main_conf, *conf])
    # our sandbox for Debian's nginx.service: applies from the next (re)start
    sandbox = put_files(DROPIN, {DROPIN: ("root", "root", "755")})
    systemd.daemon_reload(
        name="Reload systemd (nginx sandbox drop-in)", _if=any_changed(sandbox), _sudo=True
    )
    server.shell(
        name="Validate nginx configuration (nginx -t)",
        commands=["nginx -t -q"],
        _if=changed,
        _sudo=True,
    )
    systemd.service(
        name="nginx enabled and running", service="nginx", running=True, enabled=True, _sudo=True
    )
    # A sandbox applies to the processes systemd starts: only a restart (its listening
    # sockets closed for a moment) moves nginx into a new one. A new group membership needs
    # no more than a reload: the master sets each worker it starts to www-data's groups as
    # they are then (initgroups), so the new workers reach the gunicorn socket.
    restart = any_changed(sandbox)
    systemd.service(
        name="Restart nginx (new sandbox)",
        service="nginx",
        restarted=True,
        _if=restart,
        _sudo=True,
    )
    systemd.service(
        name="Reload nginx",
        service="nginx",
        reloaded=True,
        _if=lambda: (any_changed([socket_access])() or changed()) and not restart(),
        _sudo=True,
    )
