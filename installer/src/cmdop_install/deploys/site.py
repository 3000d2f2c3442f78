"""The whole site: every component this host belongs to, in dependency order."""

from pyinfra import host
from pyinfra.api import deploy

from cmdop_install.deploys.agent import agent
from cmdop_install.deploys.common import prepare
from cmdop_install.deploys.control_plane import control_plane
from cmdop_install.deploys.nginx import nginx
from cmdop_install.deploys.postgres import postgres
from cmdop_install.deploys.redis import redis


@deploy("CMDOP site")
def site() -> None:
    groups = set(host.groups)
    prepare()
    if "postgres" in groups:
        postgres()
    if "redis" in groups:
        redis()
    if "control_plane" in groups:
        nginx(restart_after=control_plane())
    if "agents" in groups:
        agent()


@deploy("Nothing")
def nothing() -> None:
    """No operation: used to read facts (e.g. management command output) from a host."""
