"""Issue 12 through the deployed site (host1's real nginx, gunicorn, Postgres): the HTTP
headers a browser gets, the refusals a client gets, the daemons' sandboxes, and what the
app's own database login may do."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import tomllib
from urllib.parse import urlencode

import pytest
from cmdop_install.lab import core

from tests.lab.conftest import AGENT_HOSTS
from tests.lab.helpers import cli, lab_ssh

pytestmark = pytest.mark.lab

DOMAIN = "cmdop.example.com"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _https(lab, site, method: str, path: str, body: str = "",
           headers: dict | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    ctx = ssl.create_default_context(cafile=str(site.ca))
    ctx.check_hostname = False  # the certificate names the site's domain; we dial the IP
    conn = http.client.HTTPSConnection(lab.host("host1").ip, 443, context=ctx, timeout=15)
    conn.request(method, path, body=body or None, headers={"Host": DOMAIN, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


# --- 6. HTTP hardening -----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/login/", "/api/v1/openapi.json"])
def test_browser_headers_come_once_from_one_place(lab, site, path) -> None:
    response, _ = _https(lab, site, "GET", path)
    assert response.status == 200
    assert response.headers.get_all("Strict-Transport-Security") == [
        "max-age=31536000; includeSubDomains"]  # once, and no preload on the internal CA
    assert response.headers.get_all("X-Content-Type-Options") == ["nosniff"]
    policies = response.headers.get_all("Content-Security-Policy") or []
    assert len(policies) == 1, policies
    policy = policies[0]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy


def test_the_pages_script_and_styles_are_files_the_policy_allows(lab, site) -> None:
    _, page = _https(lab, site, "GET", "/login/")
    assert b"<script>" not in page and b"style=" not in page
    css, _ = _https(lab, site, "GET", "/assets/cmdop.css")
    assert css.status == 200 and css.getheader("Content-Type").startswith("text/css")
    script, _ = _https(lab, site, "GET", "/assets/session.js")
    assert script.status == 200 and "javascript" in script.getheader("Content-Type")


def test_port_80_redirects_to_the_configured_name_without_a_version(lab, site) -> None:
    for host in (DOMAIN, "evil.invalid"):
        conn = http.client.HTTPConnection(lab.host("host1").ip, 80, timeout=10)
        conn.request("GET", "/device/?user_code=AB", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 301
        assert response.getheader("Location") == f"https://{DOMAIN}/device/?user_code=AB"
        assert response.getheader("Server") == "nginx"


# --- 4. refusals: JSON with Retry-After; device polling is paced by slow_down only ------------
# (first in this file's auth tests: it starts one flow, the flood test below exhausts the limit)

def test_device_polling_through_nginx_meets_slow_down_never_a_429(lab, site) -> None:
    started, body = _https(lab, site, "POST", "/api/v1/oauth/device_authorization",
                           urlencode({"client_id": "cmdop-cli"}), FORM)
    assert started.status == 200, body
    device_code = json.loads(body)["device_code"]
    poll = urlencode({"client_id": "cmdop-cli", "device_code": device_code,
                      "grant_type": "urn:ietf:params:oauth:grant-type:device_code"})
    # 30 polls at once: more than nginx's auth zone ever let through (10/min, burst 10);
    # a client at the advertised interval makes fewer, and meets the same answers
    errors = []
    for _ in range(30):
        answer, body = _https(lab, site, "POST", "/api/v1/oauth/token", poll, FORM)
        assert answer.status == 400, (answer.status, body)
        errors.append(json.loads(body)["error"])
    assert set(errors) <= {"authorization_pending", "slow_down"} and "slow_down" in errors


def test_a_sign_in_flood_is_refused_in_json_with_retry_after(lab, site) -> None:
    answers = [_https(lab, site, "POST", "/api/v1/oauth/device_authorization",
                      urlencode({"client_id": "cmdop-cli"}), FORM) for _ in range(15)]
    refused = [(response, body) for response, body in answers if response.status == 429]
    # the seed's 10 a minute (a fixed window may straddle a minute: then 10 on each side)
    assert refused and len(answers) - len(refused) <= 10 + 1
    for response, body in refused:
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(body)["error"] == "rate_limited"
        assert int(response.getheader("Retry-After")) >= 1


# --- 7a. the stock daemons' units get our sandbox drop-ins ------------------------------------

@pytest.mark.parametrize(("unit", "at_most"), [("nginx.service", 2.5),
                                               ("postgresql@15-main.service", 1.5)])
def test_stock_daemons_run_sandboxed(lab, site, unit, at_most) -> None:
    out = lab_ssh(lab, "host1", f"sudo systemd-analyze security --no-pager {unit} | tail -1")
    assert f"Overall exposure level for {unit}:" in out.stdout, out.stdout + out.stderr
    score = float(out.stdout.split(f"{unit}:", 1)[1].split()[0])
    print(f"systemd-analyze security {unit}: {score}")  # noqa: T201 - the figure for the report
    assert score <= at_most, out.stdout  # Debian's unit alone: 9.6 UNSAFE


def _healthy(lab, site) -> None:
    response, body = _https(lab, site, "GET", "/api/v1/openapi.json")
    assert response.status == 200, body[:200]


def test_nginx_reloads_restarts_and_reopens_logs_in_its_sandbox(lab, site) -> None:
    log = "/var/log/nginx/error.log"
    seen = lab_ssh(lab, "host1", f"sudo cat {log} | wc -l")
    assert seen.returncode == 0, seen.stderr
    for command in ("sudo systemctl reload nginx", "sudo systemctl restart nginx",
                    # logrotate's reopen (root reads the pid file: it is 0640 under UMask=)
                    "sudo sh -c 'kill -USR1 \"$(cat /run/nginx.pid)\"'"):
        done = lab_ssh(lab, "host1", f"{command} && sleep 1 && systemctl is-active nginx")
        assert done.stdout.strip() == "active", (command, done.stdout, done.stderr)
        _healthy(lab, site)
    # what the sandbox would break says so: an emerg (a file or port it cannot open) or an
    # EACCES; earlier tests' lines (e.g. crit: the app's socket gone during its restarts)
    # are not this test's
    new = lab_ssh(lab, "host1", f"sudo tail -n +{int(seen.stdout.strip()) + 1} {log}")
    refused = [line for line in new.stdout.splitlines()
               if "[emerg]" in line or "Permission denied" in line]
    assert refused == [], refused


def test_postgres_runs_as_its_owner_and_pg_ctl_still_works(lab, site) -> None:
    owner = lab_ssh(lab, "host1", "ps -o user= -p $(systemctl show -p MainPID --value "
                                  "postgresql@15-main)")
    assert owner.stdout.strip() == "postgres", owner.stdout + owner.stderr
    for command in ("sudo pg_ctlcluster 15 main reload", "sudo systemctl reload postgresql@15-main",
                    "sudo pg_ctlcluster 15 main restart"):
        done = lab_ssh(lab, "host1", f"{command} && systemctl is-active postgresql@15-main")
        assert done.stdout.strip() == "active", (command, done.stdout, done.stderr)
    ready = lab_ssh(lab, "host1", "for i in $(seq 30); do sudo runuser -u postgres -- "
                                  "psql -XtAc 'SELECT 1' 2>/dev/null && break; sleep 1; done")
    assert ready.stdout.strip() == "1", ready.stderr


# --- 7b. the app's database logins have data rights only ---------------------------------------

def _app_login(lab) -> str:
    """The login the control plane uses now (blue/green alternate; the idle one has no
    password outside a rotation)."""
    conf = lab_ssh(lab, "host1", "sudo cat /etc/cmdop/server.toml")
    assert conf.returncode == 0, conf.stderr
    return tomllib.loads(conf.stdout)["database"]["user"]


def _as_app(lab, site, sql: str) -> subprocess.CompletedProcess[str]:
    """psql on host1 with the app's own credentials (the password through ssh's stdin into a
    0600 file, never argv)."""
    login = _app_login(lab)
    password = site.secrets[f"postgres_password_{login.rsplit('_', 1)[1]}"]
    psql = (f"psql 'host={lab.host('host1').ip} dbname=cmdop user={login} "
            "sslmode=verify-full sslrootcert=/etc/postgresql/tls/ca.crt' -XtA")
    return subprocess.run(
        core.ssh_argv(lab, "host1",
                      f"f=$(mktemp); cat > $f; sudo PGPASSFILE=$f {psql} -c \"{sql}\"; rm -f $f"),
        input=f"*:*:*:{login}:{password}\n",
        capture_output=True, text=True, timeout=60, check=False)


def _as_postgres(lab, sql: str) -> str:
    done = lab_ssh(lab, "host1", f"sudo runuser -u postgres -- psql -XtA -d cmdop -c \"{sql}\"")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _app_has_data_rights_only(lab, site) -> None:
    me = _as_app(lab, site, "SELECT current_user, count(*) > 0 FROM identity_user GROUP BY 1")
    assert me.stdout.strip() == f"{_app_login(lab)}|t", me.stderr
    for sql in ("DROP TABLE identity_user", "ALTER TABLE identity_user ADD COLUMN x int",
                "TRUNCATE identity_user", "CREATE TABLE mine (id int)",
                "SET ROLE cmdop_owner", "SET ROLE cmdop_admin"):
        refused = _as_app(lab, site, sql)
        # DDL on a table: "must be owner"; CREATE and SET ROLE: "permission denied"
        assert any(why in refused.stderr for why in ("permission denied", "must be owner")), (
            sql, refused.stdout, refused.stderr)
    owners = _as_postgres(lab, "SELECT DISTINCT tableowner FROM pg_tables "
                               "WHERE schemaname = 'public'")
    assert owners == "cmdop_owner"


def _app_works(site) -> None:
    """Every agent's heartbeat reached the database through the app's own login."""
    info = json.loads(cli("status", str(site.dir), "--json").stdout)
    agents = [c for h in info["hosts"] if h["host"] in AGENT_HOSTS for c in h["components"]]
    assert len(agents) == len(AGENT_HOSTS) and all(a["online"] for a in agents), agents


def test_a_stolen_app_password_cannot_change_the_schema(lab, site) -> None:
    _app_has_data_rights_only(lab, site)
    _app_works(site)


def test_a_site_whose_app_acted_as_the_owner_is_brought_down_to_data_rights(lab, site) -> None:
    """The upgrade path: sites deployed before this had blue/green in the owner role, acting
    as it (a table could even belong to a login). A redeploy takes that away."""
    login = _app_login(lab)
    _as_postgres(lab, f"GRANT cmdop_owner TO {login}; "
                      f"ALTER ROLE {login} SET role = 'cmdop_owner'; "
                      f"ALTER TABLE machines_machine OWNER TO {login}")
    assert _as_app(lab, site, "SELECT current_user").stdout.strip() == "cmdop_owner"
    cli("deploy", str(site.dir))
    _app_has_data_rights_only(lab, site)
    _app_works(site)
    rerun = cli("deploy", str(site.dir))
    assert rerun.stdout.strip().splitlines()[-1].startswith("0 change(s)"), rerun.stdout
