"""`cmdop-install rotate` on the deployed lab site (conftest ``site``), under load.

The load (tests/support/site_load.py) signs in, browses while signed in, refreshes OAuth
tokens, calls the API with a key and keeps an agent session echoing input, while the lab
agents long-poll. Rotating the Django SECRET_KEY, the app's Postgres password and its Redis
password must fail none of it, sign nobody out and never restart Redis; after --finish the
old values are refused and a redeploy changes nothing. A rollback from the switched phase,
under the same load, fails none of it either and gives back a working site on the old
values. Runs after the other site tests that expect the first login (file order) and before
uninstall; it leaves the site on the other blue/green login, which ``site.secrets`` then
describes.
"""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest
from cmdop_install.lab import core
from cmdop_install.manage import api_key_command, parse_api_key
from cmdop_install.secrets import SecretStore
from cmdop_install.site import load_site

from tests.lab.conftest import AGENT_HOSTS, NORMAL_HOSTS
from tests.lab.helpers import cli, fleet, lab_ssh, manage, redis_started
from tests.support.site_load import Browser, Endpoint, SiteLoad

pytestmark = pytest.mark.lab

# the app's Postgres login (blue and green) and its Redis ACL user, rotated and rolled back
ROTATED = ("django_secret_key", "postgres_password_blue", "redis_password_app")


def _secrets(site) -> dict[str, str]:
    return SecretStore.open(site.dir, load_site(site.dir)["site"]["key_file"]).values()


def _rotation(site) -> dict | None:
    return json.loads((site.dir / "rotation.json").read_text())["rotation"]


def _app_login(lab) -> str:
    """The Postgres login the deployed control plane uses (its server.toml)."""
    conf = lab_ssh(lab, "host1", "sudo cat /etc/cmdop/server.toml")
    assert conf.returncode == 0, conf.stderr
    return tomllib.loads(conf.stdout)["database"]["user"]


def _pg_login(lab, role: str, password: str) -> subprocess.CompletedProcess[str]:
    """``role`` logs in to Postgres from host1 with ``password`` (stdin, never argv)."""
    psql = (f"psql 'host={lab.host('host1').ip} dbname=cmdop user={role} "
            "sslmode=verify-full sslrootcert=/etc/postgresql/tls/ca.crt' -XtA "
            "-c 'SELECT current_user'")
    return subprocess.run(
        core.ssh_argv(lab, "host1",
                      f"f=$(mktemp); cat > $f; sudo PGPASSFILE=$f {psql}; r=$?; rm -f $f; exit $r"),
        input=f"*:*:*:{role}:{password}\n", capture_output=True, text=True, timeout=60,
        check=False)


def _logs_in(lab, role: str, password: str) -> bool:
    out = _pg_login(lab, role, password)
    if out.returncode == 0:
        assert out.stdout == f"{role}\n", out.stdout
        return True
    assert "password authentication failed" in out.stderr, out.stderr
    return False


def _redis_logs_in(lab, site, password: str) -> bool:
    """The app's Redis user logs in from host1 over TLS with the control plane's certificate
    and ``password`` (stdin into redis-cli's environment, never argv)."""
    config = load_site(site.dir)
    tls = "/etc/cmdop/tls"
    cli_argv = (f"redis-cli --no-auth-warning --tls --cacert {tls}/ca.crt --cert {tls}/app.crt "
                f"--key {tls}/app.key -h {lab.host('host1').ip} -p {config['redis']['port']} "
                f"--user {config['site']['name']}-app PING")
    out = subprocess.run(
        core.ssh_argv(lab, "host1", f"sudo sh -c 'REDISCLI_AUTH=\"$(cat)\" {cli_argv}'"),
        input=password, capture_output=True, text=True, timeout=60, check=False)
    if out.stdout.strip() == "PONG":
        return True
    assert "WRONGPASS" in out.stderr + out.stdout, (out.stdout, out.stderr)
    return False


def _server_errors(lab) -> str:
    """The control plane's log lines of the last minutes that are not access lines (a
    failure's cause, for the assertion's message)."""
    out = lab_ssh(lab, "host1", "sudo journalctl -u cmdop-server --since -5min --no-pager -q "
                  "-o short-precise | grep -v ' HTTP/1.[01]\" [23]' | tail -n 60; "
                  "echo '-- postgres:'; sudo grep -hE 'FATAL|PANIC' /var/log/postgresql/*.log "
                  "| tail -n 20")
    return out.stdout + out.stderr


def _agents_online(lab, site) -> dict[str, bool]:
    rows = fleet(lab, site.dir)
    return {h: bool(rows.get(h, {}).get("online")) for h in AGENT_HOSTS}


@pytest.fixture(scope="module")
def endpoint(lab, site) -> Endpoint:
    return Endpoint(lab.host("host1").ip, load_site(site.dir)["site"]["domain"], str(site.ca))


@pytest.fixture(scope="module")
def load(lab, site, endpoint):
    config = load_site(site.dir)
    workspace = config["site"]["name"]
    email = config["site"]["owner_email"] or f"admin@{config['site']['domain']}"
    key = parse_api_key(manage(lab, api_key_command(workspace, "lab-rotate")))[1]
    generator = SiteLoad(endpoint, workspace, email, site.secrets["owner_password"], key,
                         machine_hostname=AGENT_HOSTS[0])
    generator.prepare()
    yield generator
    generator.stop()
    # later lab tests read the site's current secrets from the shared fixture
    site.secrets.clear()
    site.secrets.update(_secrets(site))


def test_rotate_then_finish_under_load_fails_no_request_and_signs_nobody_out(
        lab, site, load, endpoint) -> None:
    old = _secrets(site)
    old_login = _app_login(lab)
    old_role = old_login.rsplit("_", 1)[1]
    new_role = "green" if old_role == "blue" else "blue"
    redis_before = redis_started(lab)
    # signed in with the old key only, then idle all through the grace period
    idle = Browser(endpoint)
    load.auth_turn()
    assert idle.sign_in(load.email, load.password)[0]

    load.start()
    rotated = cli("rotate", str(site.dir), *ROTATED, "--yes")
    assert "phase switched: done" in rotated.stdout, rotated.stdout
    # switched: the app uses the other login; the old one still logs in
    assert _app_login(lab) == f"cmdop_{new_role}"
    new = _secrets(site)
    assert new["django_secret_key"] != old["django_secret_key"]
    assert _logs_in(lab, f"cmdop_{old_role}", old[f"postgres_password_{old_role}"])
    assert _logs_in(lab, f"cmdop_{new_role}", new[f"postgres_password_{new_role}"])
    # the control plane uses the new Redis password; Redis still takes the old one too
    assert new["redis_password_app"] != old["redis_password_app"]
    assert _redis_logs_in(lab, site, old["redis_password_app"])
    assert _redis_logs_in(lab, site, new["redis_password_app"])
    # every kind of request is served on the new values before the old ones go
    assert load.wait_served(load.served(), SiteLoad.KINDS), load.served()

    finished = cli("rotate", str(site.dir), "--finish", "--yes")
    assert "finished" in finished.stdout, finished.stdout
    assert load.wait_served(load.served(), SiteLoad.KINDS), load.served()
    counts = load.stop()
    assert counts.failures == [], counts.failures[:10]
    assert all(_agents_online(lab, site).values()), _agents_online(lab, site)

    assert _rotation(site) is None
    assert "django_secret_key:previous" not in _secrets(site)
    # the session used all along is still signed in; one signed only with the old key is not
    assert load.browser.signed_in(f"/w/{load.workspace}/machines/") == (True, 200)
    assert idle.signed_in(f"/w/{load.workspace}/machines/") == (False, 302)
    # the old login can no longer log in (its password is NULL); the new one can
    assert not _logs_in(lab, f"cmdop_{old_role}", old[f"postgres_password_{old_role}"])
    assert _logs_in(lab, f"cmdop_{new_role}", new[f"postgres_password_{new_role}"])
    # the old Redis password is refused, the new one logs in; Redis was never restarted
    assert not _redis_logs_in(lab, site, old["redis_password_app"])
    assert _redis_logs_in(lab, site, new["redis_password_app"])
    assert redis_started(lab) == redis_before


def test_rollback_from_the_switched_phase_gives_back_a_working_site(lab, site, load,
                                                                    endpoint) -> None:
    before = _secrets(site)
    login = _app_login(lab)
    role = login.rsplit("_", 1)[1]
    other = "green" if role == "blue" else "blue"
    load.start()
    cli("rotate", str(site.dir), *ROTATED, "--yes")
    assert (_rotation(site) or {}).get("phase") == "switched"
    assert _app_login(lab) == f"cmdop_{other}"
    rotated = _secrets(site)
    # every kind of request is served on the new values, then the rotation is taken back
    assert load.wait_served(load.served(), SiteLoad.KINDS), load.served()

    rolled = cli("rotate", str(site.dir), "--rollback", "--yes")
    assert "rolled back" in rolled.stdout, rolled.stdout
    # the new passwords went only once the workers that used them had finished
    assert "workers from before the reload to finish" in rolled.stdout, rolled.stdout
    assert "still running" not in rolled.stdout, rolled.stdout
    assert load.wait_served(load.served(), SiteLoad.KINDS), load.served()
    counts = load.stop()
    assert counts.failures == [], f"{counts.failures[:10]}\n{_server_errors(lab)}"
    assert _rotation(site) is None
    after = _secrets(site)
    assert after["django_secret_key"] == before["django_secret_key"]
    assert after[f"postgres_password_{role}"] == before[f"postgres_password_{role}"]
    assert after["redis_password_app"] == before["redis_password_app"]
    assert _app_login(lab) == login
    assert _logs_in(lab, login, before[f"postgres_password_{role}"])
    assert not _logs_in(lab, f"cmdop_{other}", after[f"postgres_password_{other}"])
    assert _redis_logs_in(lab, site, before["redis_password_app"])
    assert not _redis_logs_in(lab, site, rotated["redis_password_app"])
    # the site works on the old values: the session, a new sign-in, the agent session
    browsed = load.browse()
    assert browsed[0], f"signed out by the rollback: {browsed[1]}\n{_server_errors(lab)}"
    load.auth_turn()
    signed_in, status = Browser(endpoint).sign_in(load.email, load.password)
    assert signed_in, (f"a new sign-in after the rollback answered {status}\n"
                       f"{_server_errors(lab)}")
    echoed = load.echo()
    assert echoed[0], f"no agent session after the rollback: {echoed[1]}\n{_server_errors(lab)}"
    assert all(_agents_online(lab, site).values())


def test_a_redeploy_after_the_rotations_changes_nothing(site) -> None:
    again = cli("deploy", str(site.dir))
    assert f"0 change(s) on {len(NORMAL_HOSTS)} host(s)" in again.stdout, again.stdout
