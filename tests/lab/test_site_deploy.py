"""A whole site deployed onto lab hosts over SSH: idempotent, TLS 1.3 only, no secret leaks.

The site (conftest ``site``): host1 carries Postgres, Redis and the control plane; the other
hosts run agents.
"""

import http.client
import json
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import psycopg
import pytest
from cmdop_install.deploy import deploy_site
from cmdop_install.lab import core
from cmdop_install.sitedir import SiteDir

from tests.lab.conftest import AGENT_HOSTS, NORMAL_HOSTS
from tests.lab.helpers import cli, lab_ssh

pytestmark = pytest.mark.lab


def test_first_deploy_converges_and_second_changes_nothing(site) -> None:
    assert f"change(s) on {len(NORMAL_HOSTS)} host(s)" in site.first.stdout
    assert not site.first.stdout.startswith("0 change")
    again = deploy_site(SiteDir.load(site.dir))
    assert again.failed == []
    changed = {h.name: [o.name for o in h.ops if o.changed] for h in again.hosts.values()}
    assert sum(map(len, changed.values())) == 0, f"a rerun changed: {changed}"


def test_dry_run_on_a_converged_site_would_change_nothing(site) -> None:
    out = cli("deploy", str(site.dir), "--dry-run")
    assert out.stdout.strip().endswith(f"dry run: 0 change(s) on {len(NORMAL_HOSTS)} host(s)")


def test_dry_run_reports_a_drifted_host_and_leaves_it_as_it_was(lab, site) -> None:
    """host2's agent config drifted (content and mode): --dry-run names the change on host2
    alone and touches nothing there (file, mode, the agent process); deploy converges it."""
    config = "/etc/cmdop-agent/agent.toml"
    drift = f"echo '# drifted' | sudo tee -a {config} >/dev/null && sudo chmod 644 {config}"
    assert lab_ssh(lab, "host2", drift).returncode == 0
    probe = (f"sudo sha256sum {config}; sudo stat -c %a {config}; "
             "systemctl show -p MainPID --value cmdop-agent")
    before = lab_ssh(lab, "host2", probe).stdout
    dry = cli("deploy", str(site.dir), "--dry-run")
    lines = dry.stdout.splitlines()
    assert "host2: 0 would change" not in lines and any(
        line.startswith("host2: ") and line.endswith(" would change") for line in lines
    ), dry.stdout
    for name in NORMAL_HOSTS:
        if name != "host2":
            assert f"{name}: 0 would change" in lines, dry.stdout
    assert not dry.stdout.strip().endswith(f"dry run: 0 change(s) on {len(NORMAL_HOSTS)} host(s)")
    assert lab_ssh(lab, "host2", probe).stdout == before, "the dry run changed host2"
    real = cli("deploy", str(site.dir))
    assert "host2: 0 changed" not in real.stdout.splitlines(), real.stdout
    converged = lab_ssh(lab, "host2", f"sudo grep -c drifted {config}; sudo stat -c %a {config}")
    assert converged.stdout.split() == ["0", "600"], converged.stdout
    again = deploy_site(SiteDir.load(site.dir))
    assert again.failed == [] and again.changes == 0


def test_no_secret_in_output_or_ps(site) -> None:
    assert site.ps.count("\n") > 10, "the ps sampler did not run"
    for name, value in site.secrets.items():
        assert value not in site.first.stdout + site.first.stderr, name
        assert value not in site.ps, f"{name} appeared in ps on host1 during deploy"


def test_secret_files_are_not_group_or_world_readable_beyond_their_service(lab, site) -> None:
    out = lab_ssh(
        lab,
        "host1",
        "sudo find /etc/postgresql /etc/redis /etc/nginx -type f "
        "-name '*.key' -o -type f -name 'users.acl*' -o -type f -name cmdop-acl-load.auth | "
        "sudo xargs stat -c '%a %U %G %n'",
    )
    rows = [line.split() for line in out.stdout.splitlines()]
    assert len(rows) >= 6, out.stdout + out.stderr
    for mode, _owner, _group, path in rows:
        assert int(mode, 8) & 0o077 == 0, f"{path} is {mode}"
    # the password of Redis's ACL LOAD user, and the copy of the users Redis last loaded
    assert ["400", "root", "root", "/etc/redis/cmdop-acl-load.auth"] in rows, rows
    assert ["600", "root", "root", "/etc/redis/users.acl.loaded"] in rows, rows
    leftovers = lab_ssh(
        lab,
        "host1",
        "sudo find / -xdev -name '.cmdop-password-*' -o -name 'pyinfra-*' -path '/tmp/*'",
    )
    assert leftovers.stdout.strip() == "", "a secret file stayed behind"


def _tls_context(ca: Path, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def test_nginx_speaks_tls13_only_with_a_chain_to_the_site_ca(lab, site) -> None:
    ip = lab.host("host1").ip
    with (
        socket.create_connection((ip, 443), timeout=5) as raw,
        _tls_context(site.ca).wrap_socket(raw, server_hostname=ip) as tls,
    ):
        assert tls.version() == "TLSv1.3"
    with pytest.raises(ssl.SSLError), socket.create_connection((ip, 443), timeout=5) as raw:
        _tls_context(site.ca, ssl.TLSVersion.TLSv1_2).wrap_socket(raw, server_hostname=ip)


def _pg(lab, site, **options) -> str:
    ip = lab.host("host1").ip
    params = {
        "host": ip,
        "port": 5432,
        "dbname": "cmdop",
        "user": "cmdop_blue",
        "password": "not-the-password",
        "connect_timeout": 5,
        "sslrootcert": str(site.ca),
    }
    params.update(options)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(**params)
    return str(refused.value)


def test_postgres_requires_tls13_and_refuses_everything_else(lab, site) -> None:
    # TLS 1.3 + verify-full completes; then pg_hba refuses this machine (not a control-plane host)
    tls13 = _pg(lab, site, sslmode="verify-full")
    assert "pg_hba.conf rejects connection" in tls13 and "SSL encryption" in tls13
    tls12 = _pg(lab, site, sslmode="verify-full", ssl_max_protocol_version="TLSv1.2")
    assert "pg_hba" not in tls12, "a TLS 1.2 handshake must fail before authentication"
    plain = _pg(lab, site, sslmode="disable")
    assert "no encryption" in plain


def test_postgres_app_role_logs_in_from_the_control_plane_only_with_its_password(lab, site) -> None:
    ip = lab.host("host1").ip
    password = site.secrets["postgres_password_blue"]
    psql = (
        f"psql 'host={ip} dbname=cmdop user=cmdop_blue sslmode=verify-full "
        "sslrootcert=/etc/postgresql/tls/ca.crt' -XtA -c 'SELECT current_user' -c '\\conninfo'"
    )
    # the password goes through ssh's stdin into a 0600 file, never into argv
    ok = subprocess.run(
        core.ssh_argv(lab, "host1", f"f=$(mktemp); cat > $f; sudo PGPASSFILE=$f {psql}; rm -f $f"),
        input=f"*:*:*:cmdop_blue:{password}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.stdout.startswith("cmdop_blue\n"), ok.stderr  # itself: rows, never the schema
    assert "SSL connection (protocol: TLSv1.3" in ok.stdout
    bad = subprocess.run(
        core.ssh_argv(lab, "host1", f"f=$(mktemp); cat > $f; sudo PGPASSFILE=$f {psql}; rm -f $f"),
        input="*:*:*:cmdop_blue:wrong-password\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "password authentication failed" in bad.stderr


def test_redis_is_tls13_with_client_certificates_only(lab, site) -> None:
    ip = lab.host("host1").ip
    with (
        socket.create_connection((ip, 6379), timeout=5) as raw,
        _tls_context(site.ca).wrap_socket(raw, server_hostname=ip) as tls,
    ):
        # no client certificate: the server ends the handshake or the first exchange
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls.sendall(b"PING\r\n")
            if not tls.recv(64):
                raise ConnectionError("closed")
    with pytest.raises(ssl.SSLError), socket.create_connection((ip, 6379), timeout=5) as raw:
        _tls_context(site.ca, ssl.TLSVersion.TLSv1_2).wrap_socket(raw, server_hostname=ip)
    plain = socket.create_connection((ip, 6379), timeout=5)
    plain.sendall(b"PING\r\n")
    plain.settimeout(5)
    try:
        assert not plain.recv(64).startswith(b"+PONG")
    except (ConnectionError, TimeoutError):
        pass
    finally:
        plain.close()


@pytest.mark.parametrize("host", ["host1", "host2"])
def test_manifest_modes_match_the_hosts(lab, site, host: str, tmp_path: Path) -> None:
    out = tmp_path / "render"
    cli("render", str(site.dir), "--host", host, "--out", str(out))
    manifest = json.loads((out / "manifest.json").read_text())["hosts"][host]
    assert len(manifest) >= 3
    paths = " ".join(e["path"] for e in manifest)
    stat = lab_ssh(lab, host, f"sudo stat -c '%n %a %U %G' {paths}")
    actual = {line.split()[0]: line.split()[1:] for line in stat.stdout.splitlines()}
    for e in manifest:
        assert actual.get(e["path"]) == [e["mode"].lstrip("0"), e["owner"], e["group"]], e["path"]


def test_agents_are_enrolled_running_and_listen_nowhere(lab, site) -> None:
    for name in AGENT_HOSTS:
        out = lab_ssh(
            lab,
            name,
            "systemctl is-active cmdop-agent; "
            "sudo test -s /var/lib/cmdop-agent/credential.json && echo enrolled; "
            "sudo stat -c '%a %U' /var/lib/cmdop-agent/credential.json; "
            "pid=$(systemctl show -p MainPID --value cmdop-agent); "
            'sudo ss -lnpx -lntp | grep -c "pid=$pid," || true',
        )
        assert out.stdout.split() == ["active", "enrolled", "600", "cmdop-agent", "0"], out.stdout


def test_control_plane_answers_over_nginx_with_its_api_schema(lab, site) -> None:
    ip = lab.host("host1").ip
    ctx = _tls_context(site.ca)
    ctx.check_hostname = False  # the certificate names the site's domain; we dial the IP
    conn = http.client.HTTPSConnection(ip, 443, context=ctx, timeout=10)
    conn.request("GET", "/api/v1/openapi.json", headers={"Host": "cmdop.example.com"})
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["openapi"].startswith("3.")


def test_status_reports_services_versions_certificates_and_online_agents(lab, site) -> None:
    info = json.loads(cli("status", str(site.dir), "--json").stdout)
    # every path that deploys records itself: the newest entry is a converged rerun's, and
    # the log still holds the first deploy's changes
    assert info["last_deploy"]["failed"] == []
    log = json.loads((site.dir / "deploys.json").read_text())
    assert log[-1] == info["last_deploy"] and log[0]["changes"] > 0
    by_host = {h["host"]: h for h in info["hosts"]}
    control = {c["component"]: c for c in by_host["host1"]["components"]}
    for component in ("postgres", "redis", "control_plane", "nginx"):
        assert control[component]["state"] == "active", control[component]
        assert control[component]["version"], component
    assert "nginx-host1" in by_host["host1"]["certificates"]
    for name in AGENT_HOSTS:
        (agent,) = by_host[name]["components"]
        assert agent["state"] == "active" and agent["version"] == "0.1.0"
        assert agent["online"] is True, agent


def _variant(site, lab, tmp_path: Path, agents: list[str], extra_agent: str = "") -> Path:
    """A copy of the deployed site whose inventory adds ``extra_agent`` (raw Python)."""
    copy = tmp_path / "variant"
    shutil.copytree(site.dir, copy)
    text = core.site_inventory_text(lab, "host1", agents)
    (copy / "inventory.py").write_text(text.replace("agents = [\n", f"agents = [\n{extra_agent}"))
    return copy


def test_unreachable_host_stops_the_deploy_before_any_change(lab, site, tmp_path: Path) -> None:
    ghost = lab.host("host3").ip.rsplit(".", 1)[0] + ".99"  # inside the lab subnet, nobody there
    variant = _variant(
        site,
        lab,
        tmp_path,
        ["host2", "host3"],
        f'    ("ghost", {{"ssh_hostname": "{ghost}", **_SSH}}),\n',
    )
    cli("init", str(variant))
    out = cli("deploy", str(variant), check=False)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]  # the refusal is the run's last word
    assert last.startswith("cmdop-install: error: nothing was changed: ghost (")
    assert "cannot connect over ssh" in out.stderr
    assert "changed" not in out.stdout


def test_wrong_ssh_key_stops_the_deploy_before_any_change(lab, site, tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    variant = _variant(
        site,
        lab,
        tmp_path,
        ["host2"],
        f'    ("host3", {{"ssh_hostname": "{lab.host("host3").ip}", '
        f'**_SSH, "ssh_key": "{key}"}}),\n',
    )
    out = cli("deploy", str(variant), check=False)
    assert out.returncode == 1
    assert "nothing was changed: host3 (" in out.stderr and "cannot connect" in out.stderr


def test_a_site_that_check_rejects_is_not_deployed(site, tmp_path: Path) -> None:
    copy = tmp_path / "broken"
    shutil.copytree(site.dir, copy)
    toml = copy / "site.toml"
    toml.write_text(toml.read_text() + '\n[postgres]\nmajor = "fifteen"\n')
    out = cli("deploy", str(copy), check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("cmdop-install: error: site.toml:")
    assert out.stdout == ""


def test_no_secret_in_any_hosts_journal(lab, site) -> None:
    """journald of every host, read back here: no secret value (they never go to the hosts'
    logs through argv, environment or our programs' output)."""
    for name in NORMAL_HOSTS:
        journal = lab_ssh(lab, name, "sudo journalctl --no-pager -q -o cat")
        assert journal.returncode == 0 and journal.stdout.count("\n") > 50, journal.stderr
        for secret, value in site.secrets.items():
            assert value not in journal.stdout, f"{secret} is in the journal of {name}"


@pytest.mark.parametrize(
    ("host", "unit"),
    [
        ("host1", "cmdop-server.service"),
        ("host1", "cmdop-audit-retention.service"),
        ("host1", "cmdop-firewall.service"),
        ("host1", "cmdop-sessions-sweep.service"),
        ("host2", "cmdop-agent.service"),
    ],
)
def test_our_units_score_at_most_2_on_systemd_analyze_security(lab, site, host, unit) -> None:
    out = lab_ssh(lab, host, f"sudo systemd-analyze security --no-pager {unit} | tail -1")
    # "→ Overall exposure level for cmdop-agent.service: 1.6 OK 🙂"
    assert f"Overall exposure level for {unit}:" in out.stdout, out.stdout + out.stderr
    score = float(out.stdout.split(f"{unit}:", 1)[1].split()[0])
    assert score <= 2.0, out.stdout


def test_a_host_that_is_not_debian_12_stops_the_deploy_before_any_change(lab, site) -> None:
    # the host's own answer to "what are you": /etc/os-release, swapped for the test
    swap = (
        "sudo mv /etc/os-release /root/os-release.saved && "
        "printf 'ID=ubuntu\\nVERSION_ID=\"22.04\"\\n' | sudo tee /etc/os-release >/dev/null"
    )
    assert lab_ssh(lab, "host3", swap).returncode == 0
    try:
        out = cli("deploy", str(site.dir), check=False)
    finally:
        restore = lab_ssh(lab, "host3", "sudo mv -f /root/os-release.saved /etc/os-release")
        assert restore.returncode == 0, restore.stderr
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"cmdop-install: error: nothing was changed: host3 ({lab.host('host3').ip}): runs "
        "ubuntu-22.04; cmdop-install supports Debian 12 (bookworm) only"
    )
    assert "changed" not in out.stdout


def test_a_host_failing_mid_deploy_leaves_the_others_consistent_and_a_rerun_completes(
    lab, site
) -> None:
    # a path the deploy must write is a folder on host4: its run fails after it has begun
    config = "/etc/cmdop-agent/agent.toml"
    assert lab_ssh(lab, "host4", f"sudo rm {config} && sudo mkdir {config}").returncode == 0
    failed = cli("deploy", str(site.dir), check=False)
    assert failed.returncode == 1
    assert "deploy failed on host4" in failed.stderr
    lines = failed.stdout.splitlines()
    assert any(line.startswith("host4: FAILED") for line in lines), failed.stdout
    for name in NORMAL_HOSTS:
        if name != "host4":
            assert f"{name}: 0 changed" in lines, failed.stdout
    assert "not a regular file (move it away, then rerun): " + config in failed.stderr
    assert lab_ssh(lab, "host4", f"sudo rmdir {config}").returncode == 0
    rerun = cli("deploy", str(site.dir))
    assert "host4: 0 changed" not in rerun.stdout
    for name in NORMAL_HOSTS:
        if name != "host4":
            assert f"{name}: 0 changed" in rerun.stdout.splitlines(), rerun.stdout
    again = deploy_site(SiteDir.load(site.dir))
    assert again.failed == [] and again.changes == 0
    active = lab_ssh(lab, "host4", f"systemctl is-active cmdop-agent; sudo stat -c %a {config}")
    assert active.stdout.split() == ["active", "600"], active.stdout


def _tcp_from(lab, host: str, ip: str, port: int) -> str:
    """From ``host``: does a TCP connection to ip:port open? ("open" or "refused")."""
    out = lab_ssh(
        lab, host, f"timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' && echo open || echo refused"
    )
    return out.stdout.strip()


def test_postgres_and_redis_answer_the_control_plane_and_admin_sources_only(lab, site) -> None:
    ip = lab.host("host1").ip
    for port in (5432, 6379):
        assert _tcp_from(lab, "host1", ip, port) == "open"  # the control plane's own address
        for agent in ("host2", "host5"):
            assert _tcp_from(lab, agent, ip, port) == "refused", (agent, port)
        # this machine is the site's [firewall] admin_sources (conftest): it may connect
        socket.create_connection((ip, port), timeout=5).close()
    # ports that are not ours stay open to everyone
    assert _tcp_from(lab, "host2", ip, 443) == "open"


def test_the_deployed_audit_log_is_append_only_for_the_app(lab, site) -> None:
    ip = lab.host("host1").ip
    password = site.secrets["postgres_password_blue"]
    psql = (
        f"psql 'host={ip} dbname=cmdop_audit user=cmdop_blue sslmode=verify-full "
        "sslrootcert=/etc/postgresql/tls/ca.crt' -XtA"
    )

    def as_app(sql: str) -> subprocess.CompletedProcess[str]:
        # the password goes through ssh's stdin into a 0600 file, never into argv
        return subprocess.run(
            core.ssh_argv(
                lab,
                "host1",
                f"f=$(mktemp); cat > $f; sudo PGPASSFILE=$f {psql} -c '{sql}'; rm -f $f",
            ),
            input=f"*:*:*:cmdop_blue:{password}\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    rows = as_app("SELECT count(*) FROM audit_auditevent")
    assert rows.returncode == 0 and int(rows.stdout) > 0, rows.stderr  # the app writes rows
    for sql in (
        "DELETE FROM audit_auditevent",
        "UPDATE audit_auditevent SET id = id",
        "TRUNCATE audit_auditevent",
    ):
        refused = as_app(sql)
        assert "permission denied" in refused.stderr, (sql, refused.stdout, refused.stderr)
    # retention still works: it runs the audit owner's purge function
    purge = lab_ssh(
        lab,
        "host1",
        "sudo systemctl start cmdop-audit-retention.service && "
        "systemctl show -p Result --value cmdop-audit-retention.service",
    )
    assert purge.stdout.strip() == "success", purge.stdout + purge.stderr
