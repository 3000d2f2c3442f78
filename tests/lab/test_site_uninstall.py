"""`uninstall` of the deployed site (conftest ``site``): with --keep-data and back, then all.

Runs last (file order): it takes the site away.
"""

import json
import time

import pytest

from tests.lab.conftest import AGENT_HOSTS, NORMAL_HOSTS
from tests.lab.helpers import cli, lab_ssh

pytestmark = pytest.mark.lab

OURS_CP = "/opt/cmdop /etc/cmdop /etc/nginx/tls /etc/systemd/system/cmdop-server.service"
OURS_AGENT = "/opt/cmdop-agent /etc/cmdop-agent /etc/systemd/system/cmdop-agent.service"
PG_DATA = "/var/lib/postgresql/15/main/PG_VERSION"
CREDENTIAL = "/var/lib/cmdop-agent/credential.json"


def existing(lab, host: str, paths: str) -> list[str]:
    out = lab_ssh(lab, host, f"for p in {paths}; do sudo test -e $p && echo $p; done; true")
    return out.stdout.split()


def listening(lab, host: str) -> set[str]:
    out = lab_ssh(lab, host, "ss -Hlnt | awk '{print $4}'")
    return {a.rsplit(":", 1)[-1] for a in out.stdout.split()}


def test_uninstall_asks_first_and_does_nothing_without_a_yes(lab, site) -> None:
    out = cli("uninstall", str(site.dir), check=False, input="n\n")
    assert out.returncode == 1
    assert "aborted" in out.stderr
    assert existing(lab, "host1", OURS_CP) == OURS_CP.split()


def test_uninstall_keeping_data_then_deploy_brings_the_site_back(lab, site) -> None:
    out = cli("uninstall", str(site.dir), "--keep-data", "--yes")
    assert f"uninstalled from {len(NORMAL_HOSTS)} host(s) (data kept" in out.stdout
    assert existing(lab, "host1", OURS_CP) == []
    assert existing(lab, "host1", PG_DATA) == [PG_DATA]
    assert not {"443", "5432", "6379"} & listening(lab, "host1")
    for name in AGENT_HOSTS:
        assert existing(lab, name, OURS_AGENT) == [], name
        assert existing(lab, name, CREDENTIAL) == [CREDENTIAL], name
    again = cli("uninstall", str(site.dir), "--keep-data", "--yes")
    assert all(f"{n}: 0 changed" in again.stdout for n in NORMAL_HOSTS), again.stdout

    cli("deploy", str(site.dir))
    # the agents kept their enrollment; started before the control plane was back, they
    # reconnect with their backoff (capped at 120 s): wait for every one to report in
    deadline = time.monotonic() + 200
    while True:
        info = json.loads(cli("status", str(site.dir), "--json").stdout)
        rows = [(h["host"], c) for h in info["hosts"] for c in h["components"]]
        for host, component in rows:
            assert component["state"] == "active", (host, component)
        offline = [host for host, c in rows if "online" in c and not c["online"]]
        if not offline:
            break
        assert time.monotonic() < deadline, f"still offline: {offline}"
        time.sleep(5)


def test_uninstall_removes_everything_it_installed(lab, site) -> None:
    cli("uninstall", str(site.dir), "--yes")
    assert existing(lab, "host1", f"{OURS_CP} /var/lib/postgresql /etc/redis /var/lib/cmdop") == []
    assert not {"443", "5432", "6379"} & listening(lab, "host1")
    packages = lab_ssh(
        lab,
        "host1",
        "dpkg-query -W -f='${db:Status-Abbrev} ${Package}\\n' postgresql-15 redis-server nginx "
        "2>/dev/null | grep '^ii' ; getent passwd cmdop; getent group cmdop; true",
    )
    assert packages.stdout.strip() == ""
    for name in AGENT_HOSTS:
        assert existing(lab, name, f"{OURS_AGENT} /var/lib/cmdop-agent /home/cmdop-agent") == []
        users = lab_ssh(lab, name, "getent passwd cmdop-agent; systemctl is-active cmdop-agent")
        assert users.stdout.split() == ["inactive"], name
    again = cli("uninstall", str(site.dir), "--yes")
    assert all(f"{n}: 0 changed" in again.stdout for n in NORMAL_HOSTS), again.stdout
