"""The whole site: every component this host belongs to, in dependency order."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt

from cmdop_install.deploys.agent import agent
from cmdop_install.deploys.common import extra, payload, prepare, temp_dir
from cmdop_install.deploys.control_plane import control_plane
from cmdop_install.deploys.firewall import firewall
from cmdop_install.deploys.nginx import nginx
from cmdop_install.deploys.ops import bundle_packages, bundle_repository
from cmdop_install.deploys.postgres import postgres
from cmdop_install.deploys.redis import redis


def debian_packages(groups: set[str], pg_major: int | None) -> list[str]:
    """What a host in ``groups`` installs from Debian (the offline bundle carries their closure)."""
    wanted = []
    if {"postgres", "redis"} & groups:
        wanted.append("nftables")
    if "postgres" in groups:
        wanted.append(f"postgresql-{pg_major}")
    if "redis" in groups:
        wanted.append("redis-server")
    if "control_plane" in groups:
        wanted += ["nginx", "python3", "python3-venv"]
    if "agents" in groups:
        wanted += ["python3", "python3-venv"]
    return sorted(set(wanted))


@deploy("CMDOP site")
def site() -> None:
    groups = set(host.groups)
    prepare()
    pg_major = extra("postgres")["major"] if "postgres" in groups else None
    wanted = debian_packages(groups, pg_major)
    bundle = extra("bundle") if (payload() / "bundle.json").exists() else None
    if bundle is not None:
        bundle_repository(name="Offline bundle", bundle=bundle, temp_dir=temp_dir(),
                          _sudo=True)
        bundle_packages(name="Debian packages (bundle)", names=wanted, bundle=bundle,
                        _sudo=True)
    else:
        # one package operation for the whole host: one dpkg query instead of one per component
        apt.packages(
            name="Debian packages",
            packages=wanted,
            update=True,
            cache_time=86400,
            no_recommends=True,
            _sudo=True,
        )
    if {"postgres", "redis"} & groups:
        firewall()
    if "postgres" in groups:
        postgres()
    if "redis" in groups:
        redis()
    if "control_plane" in groups:
        control_plane()
        nginx()
    if "agents" in groups:
        agent()


@deploy("Nothing")
def nothing() -> None:
    """No operation: used to read facts (e.g. management command output) from a host."""
