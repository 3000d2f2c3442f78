"""Control-plane upgrades on the deployed lab site (conftest ``site``, control plane on host1),
while requests run through its nginx.

The site runs this commit's cmdop-server (N-1). N is this commit plus a migration (a new
table, expand-only); a broken N+1 adds a good migration and then one that fails. `deploy`
brings each with the real CLI. Afterwards the site is deployed from this commit again, so
the tests after this file meet the release they expect (its migrations are all applied
already, so the switch back is a plain HUP too).
"""

import json
import time
from collections.abc import Iterator

import pytest
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.site import load_site

from tests.lab.helpers import cli, lab_ssh
from tests.support import upgrade

pytestmark = pytest.mark.lab

PROBE = "CREATE TABLE upgrade_probe (id integer)"
BROKEN = {"zz_upgrade_probe": PROBE,
          "zz_upgrade_probe_2": "CREATE TABLE upgrade_probe_2 (id integer)",
          "zz_upgrade_fails": "SELECT 1/0"}


def _host1(lab, command: str) -> str:
    out = lab_ssh(lab, "host1", command)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _facts(lab) -> dict[str, str]:
    """The release current links to, gunicorn's master, and what the app database holds."""
    tables = _host1(lab, "sudo runuser -u postgres -- psql -d cmdop -XtA -c \"SELECT "
                         "string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE "
                         "tablename LIKE 'upgrade_probe%'\"")
    applied = _host1(lab, "sudo runuser -u postgres -- psql -d cmdop -XtA -c \"SELECT "
                          "string_agg(name, ',' ORDER BY name) FROM django_migrations WHERE "
                          "name LIKE 'zz_upgrade%'\"")
    return {"current": _host1(lab, "readlink /opt/cmdop/server/current"),
            "master": _host1(lab, "systemctl show -p MainPID --value cmdop-server"),
            "tables": tables, "applied": applied}


def _restart_pending(site) -> bool:
    hosts = json.loads(cli("status", str(site.dir), "--json").stdout)["hosts"]
    (cp,) = [c for h in hosts for c in h["components"] if c["component"] == "control_plane"]
    return cp["restart_pending"]


def _old_workers_leave(site) -> None:
    """status stops showing another release serving once the old workers have finished what
    they held (agents' long-polls: 25 s; gunicorn's graceful_timeout: 30 s)."""
    deadline = time.monotonic() + 120
    while _restart_pending(site):
        assert time.monotonic() < deadline, "workers of the old release are still serving"
        time.sleep(5)


@pytest.fixture(scope="module")
def load(lab, site) -> Iterator[upgrade.Load]:
    out = _host1(lab, f"sudo {api_key_command('labsite', 'upgrade-load')}")
    yield upgrade.Load(address=lab.host("host1").ip, ca=site.ca,
                       domain=load_site(site.dir)["site"]["domain"],
                       api_key=parse_api_key(out)[1],
                       path="/api/v1/workspaces/labsite/machines")
    back = upgrade.deploy(site.dir)  # this commit's release again, for the files after this
    assert back.returncode == 0, back.stdout + back.stderr


def test_an_upgrade_under_load_migrates_first_then_reloads_with_no_failed_request(
        lab, site, load, tmp_path) -> None:
    tree = upgrade.release_tree(tmp_path / "n", {"zz_upgrade_probe": PROBE})
    before = _facts(lab)
    assert before["tables"] == "" and before["applied"] == ""
    load.start()
    try:
        done = upgrade.deploy(site.dir, tree)
    finally:
        load.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    after = _facts(lab)
    assert after["current"] != before["current"]
    assert after["master"] == before["master"], "gunicorn was restarted, not reloaded"
    assert (after["tables"], after["applied"]) == ("upgrade_probe", "zz_upgrade_probe")
    assert load.done >= 20, "the load did not run during the deploy"
    assert load.failures == []
    assert _host1(lab, "readlink /opt/cmdop/server/previous") == before["current"]
    _old_workers_leave(site)


def test_a_failed_migration_applies_none_and_leaves_the_release_serving(
        lab, site, load, tmp_path) -> None:
    tree = upgrade.release_tree(tmp_path / "broken", BROKEN)
    before = _facts(lab)
    assert before["applied"] == "zz_upgrade_probe"  # the upgrade above
    load.limit, load.done = 50, 0
    releases = "ls /opt/cmdop/server/releases"
    assert len(_host1(lab, releases).split()) == 2  # current and previous
    failed = upgrade.deploy(site.dir, tree)
    assert failed.returncode != 0, failed.stdout
    # it failed after installing the new release beside them: at its migrations
    assert len(_host1(lab, releases).split()) == 3
    assert _facts(lab) == before  # same release, same master, zz_upgrade_probe_2 rolled back
    _old_workers_leave(site)
    load.start()
    load.finish()
    assert load.done == 50 * load.threads and load.failures == []
