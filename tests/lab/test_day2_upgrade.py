"""Control-plane upgrades on the deployed lab site (conftest ``site``, control plane on host1),
while requests run through its nginx.

The site runs this commit's cmdop-server (N-1). N is this commit plus a migration (a new
table, expand-only); a broken N+1 adds a good migration and then one that fails. `deploy`
brings each with the real CLI. Afterwards the site is deployed from this commit again, so
the tests after this file meet the release they expect (its migrations are all applied
already, so the switch back is a plain HUP too).

Two loads run through nginx: 3 keep-alive clients asking the API (``upgrade.Load``), and a
person's (``site_load.SiteLoad``): a browser signed in, OAuth refreshes, API-key calls and
a session on an agent typing an echo every 2 s (the agent long-polls for the input and
posts the output back). Each failed request is counted and reported; every echo typed
must come back exactly once.
"""

import json
import time
from collections.abc import Iterator

import pytest
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.site import load_site

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import cli, lab_ssh
from tests.support import upgrade
from tests.support.site_load import Counts, Endpoint, SiteLoad

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


@pytest.fixture(scope="module")
def person(lab, site) -> SiteLoad:
    """Signed in, with OAuth tokens and a session open on an agent, before any upgrade."""
    config = load_site(site.dir)
    workspace = config["site"]["name"]
    out = _host1(lab, f"sudo {api_key_command(workspace, 'upgrade-person')}")
    typing = SiteLoad(Endpoint(lab.host("host1").ip, config["site"]["domain"], str(site.ca)),
                      workspace, config["site"]["owner_email"] or
                      f"admin@{config['site']['domain']}", site.secrets["owner_password"],
                      parse_api_key(out)[1], machine_hostname=AGENT_HOSTS[0], max_seconds=600)
    typing.prepare()
    return typing


def _start(person: SiteLoad) -> None:
    person.counts = Counts()  # this test's requests only
    person.start()


# A switch under load fails no request by design (a HUP: the old workers finish theirs; a
# restart: new connections wait in cmdop-server.socket's backlog). The bound leaves room for
# what this shared 2-core machine can do to a request with a 40 s timeout meanwhile.
FAILED_BOUND = 2


def _typed_through(person: SiteLoad, record, what: str) -> Counts:
    """Stop ``person``'s load once every kind was served again after ``what``; report its
    failed requests (counted, and recorded for the test report) and check its echoes."""
    assert person.wait_served(person.served(), SiteLoad.KINDS), person.served()
    counts = person.stop()
    lost, repeated = person.echoes_lost_and_repeated()
    failed = len(counts.failures)
    record(f"{what}: failed requests", f"{failed} of {counts.requests}")
    print(f"{what}: {failed} of {counts.requests} requests failed {counts.failures[:10]}; "
          f"{len(person.typed)} echoes typed, lost {lost}, repeated {repeated}")
    assert person.typed, "no echo was typed"
    assert (lost, repeated) == ([], []), "lost or repeated output"
    assert failed <= FAILED_BOUND, counts.failures
    return counts


def test_an_upgrade_under_load_migrates_first_then_reloads_with_no_failed_request(
        lab, site, load, person, tmp_path, record_property) -> None:
    tree = upgrade.release_tree(tmp_path / "n", {"zz_upgrade_probe": PROBE})
    before = _facts(lab)
    assert before["tables"] == "" and before["applied"] == ""
    _start(person)
    load.start()
    try:
        assert person.wait_served({}, SiteLoad.KINDS), person.served()  # typing before
        done = upgrade.deploy(site.dir, tree)
        _typed_through(person, record_property, "upgrade N-1 -> N")
    finally:
        load.stop()
        person.stop()
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
    releases = "ls /opt/cmdop/server/releases"
    assert len(_host1(lab, releases).split()) == 2  # current and previous
    load.failures = []
    load.start()  # the release serving answers all through the failed deploy
    try:
        failed = upgrade.deploy(site.dir, tree)
    finally:
        load.stop()
    assert failed.returncode != 0, failed.stdout
    assert load.done >= 20 and load.failures == [], load.failures[:10]
    load.limit, load.done = 50, 0
    # it failed after installing the new release beside them: at its migrations
    assert len(_host1(lab, releases).split()) == 3
    assert _facts(lab) == before  # same release, same master, zz_upgrade_probe_2 rolled back
    _old_workers_leave(site)
    load.start()
    load.finish()
    assert load.done == 50 * load.threads and load.failures == []


def test_a_restart_under_load_waits_in_the_socket_and_fails_no_request(
        lab, site, load, person, record_property) -> None:
    """What a deploy does when the unit files change or another gunicorn comes: a new
    gunicorn master, while cmdop-server.socket keeps the listening socket open (requests
    wait in its backlog for the new master instead of being refused)."""
    before = _facts(lab)
    load.limit, load.done, load.failures = 20000, 0, []
    _start(person)
    load.start()
    try:
        assert person.wait_served({}, SiteLoad.KINDS), person.served()
        _host1(lab, "sudo systemctl restart cmdop-server.service")
        _typed_through(person, record_property, "restart")
    finally:
        load.stop()
        person.stop()
    record_property("restart: keep-alive requests failed", f"{len(load.failures)} of {load.done}")
    assert _facts(lab)["master"] != before["master"]
    assert load.done >= 20 and load.failures == [], load.failures[:10]
