"""The whole site deploy, planned (dry run) on pyinfra's ``@fake`` hosts: every component's
deploy code runs in the unit tier, and the rules between operations (what restarts instead
of reloading, what waits for enrollment) hold on a fresh host.

A fake host answers every command with nothing, so it reads as fresh: no file, no package,
no agent credential; only ``uname`` and ``command -v`` answer as on Debian.
"""

from pathlib import Path

import pytest
from cmdop_install import deploy
from cmdop_install.runner import run_deploy
from cmdop_install.sitedir import SiteDir

from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.unit

FRESH_DEBIAN = {
    "fake_delay": 0,
    "fake_delay_jitter": 0,
    "fake_responses": {"uname -s": "Linux", "command -v": "/usr/bin/found"},
}
WHEELS = {
    "control_plane": {"key": "k1", "path": "/wheels", "files": [], "package_wheel": "s.whl"},
    "agents": {
        "version": "0.1.0",
        "wheelhouse": {"key": "k1", "path": "/wheels", "files": [], "package_wheel": "a.whl"},
        "switch": False,
    },
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with key_env():
        site_dir = make_site(tmp_path_factory.mktemp("site") / "s", agents=True)
        site = SiteDir.load(site_dir)
        site.secrets  # noqa: B018 - read while the key is in the environment
        return site


@pytest.fixture(scope="module")
def fresh(site, tmp_path_factory) -> dict[str, list[str]]:
    return plan(site, tmp_path_factory.mktemp("payload"))


@pytest.fixture(scope="module")
def with_join_token(site, tmp_path_factory) -> dict[str, list[str]]:
    return plan(site, tmp_path_factory.mktemp("payload"), join_token="single-use\n")  # noqa: S106


def plan(site: SiteDir, payload: Path, join_token: str | None = None) -> dict[str, list[str]]:
    """Host -> the operations that would change it (their names without the site prefix)."""
    for host in site.inventory.hosts():
        folder = payload / "@fake" / host.name  # pyinfra's name for the host: @fake/<name>
        deploy.write_payload(folder, site, host.name)
        token = None
        if join_token and "agents" in site.inventory.roles_of(host.name):
            (folder / deploy.JOIN_TOKEN_SRC).write_text(join_token)
            token = deploy.JOIN_TOKEN_SRC
        deploy.write_extras(folder, site, host.name, WHEELS, token)
    groups = {
        group: [(f"@fake/{name}", FRESH_DEBIAN) for name, _ in hosts]
        for group, hosts in site.inventory.pyinfra_groups().items()
    }
    result = run_deploy(
        groups, deploy.SITE_DEPLOY, dry_run=True, data={"cmdop_payload": str(payload)}
    )
    assert result.failed == []
    return {
        name.removeprefix("@fake/"): [
            op.name.removeprefix("CMDOP site | ") for op in host.ops if op.changed
        ]
        for name, host in result.hosts.items()
    }


def test_a_fresh_host_gets_every_component_and_restarts_rather_than_reloads(fresh) -> None:
    node = fresh["node1"]
    for wanted in (
        "Debian packages",
        "Firewall | Firewall rules loaded at boot and now",
        "PostgreSQL | Owner and blue/green roles, databases",
        "PostgreSQL | Password of cmdop_blue (a SCRAM verifier, never plaintext)",
        "Redis | Restart Redis (configuration changed)",
        "Control plane | cmdop-server release installed beside the one serving",
        "Control plane | Databases migrated, the first Owner and workspace created (once)",
        "Control plane | Switch to the release and hand it to gunicorn (HUP, old workers finish)",
        "nginx | Validate nginx configuration (nginx -t)",
        "nginx | Restart nginx (new sandbox)",
        "nginx | Reload systemd (nginx sandbox drop-in)",
        "PostgreSQL | Restart PostgreSQL (new sandbox)",
    ):
        assert wanted in node
    for not_also in (
        "Firewall | Reload the firewall rules",  # it starts with the new rules
        "Control plane | Reload the control plane (new settings or secrets)",
        "Control plane | Restart the control plane (new units)",  # the first switch did
        "Control plane | Audit log append-only for the app, retention as configured",
        "nginx | Reload nginx",
    ):
        assert not_also not in node
    assert not [op for op in node if op.startswith("Agent")]


def test_an_agent_without_a_join_token_waits_and_with_one_enrolls_and_starts(
    fresh, with_join_token
) -> None:
    waiting = fresh["agent1"]
    assert "Agent | Agent release 0.1.0" in waiting
    assert "Agent | Enroll with a single-use join token" not in waiting
    assert "Agent | Agent enabled and running" not in waiting
    assert not [op for op in waiting if op.startswith(("PostgreSQL", "Redis", "Control plane"))]
    enrolling = with_join_token["agent1"]
    assert "Agent | Enroll with a single-use join token" in enrolling
    assert "Agent | Agent enabled and running" in enrolling
