"""A whole site deployed onto lab hosts over SSH: idempotent, TLS 1.3 only, no secret leaks.

host1 carries Postgres, Redis and the control plane; host2 and host3 are agent hosts.
"""

import http.client
import json
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from cmdop_install.deploy import deploy_site
from cmdop_install.inventory import load_inventory
from cmdop_install.lab import core
from cmdop_install.secrets import SecretStore
from cmdop_install.site import load_site

from tests.lab.helpers import cli, lab_ssh

pytestmark = pytest.mark.lab

PS_SAMPLES = 3000  # bounded: at most ~5 minutes of `ps` every 0.1 s


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("site")
    site_dir = base / "labsite"
    site_dir.mkdir(mode=0o700)
    (site_dir / "inventory.py").write_text(
        core.site_inventory_text(lab, "host1", ["host2", "host3"])
    )
    cli("init", str(site_dir), "--key-file", str(base / "site.key"))
    site = load_site(site_dir)
    inventory = load_inventory(site_dir)
    groups = inventory.pyinfra_groups()
    core.map_site_domain(groups, site["site"]["domain"], lab.host("host1").ip)
    sampler = subprocess.Popen(
        core.ssh_argv(
            lab, "host1", f"for i in $(seq {PS_SAMPLES}); do ps -eo args; sleep 0.1; done"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    first = cli("deploy", str(site_dir))
    sampler.terminate()
    ps_output, _ = sampler.communicate(timeout=30)
    secrets = SecretStore.open(site_dir, site["site"]["key_file"]).values()
    return SimpleNamespace(
        dir=site_dir, first=first, ps=ps_output, secrets=secrets, ca=site_dir / "pki" / "ca.crt"
    )


def test_first_deploy_converges_and_second_changes_nothing(site) -> None:
    assert "change(s) on 3 host(s)" in site.first.stdout
    assert not site.first.stdout.startswith("0 change")
    again = deploy_site(site.dir)
    assert again.failed == []
    changed = {h.name: [o.name for o in h.ops if o.changed] for h in again.hosts.values()}
    assert sum(map(len, changed.values())) == 0, f"a rerun changed: {changed}"


def test_dry_run_on_a_converged_site_would_change_nothing(site) -> None:
    out = cli("deploy", str(site.dir), "--dry-run")
    assert out.stdout.strip().endswith("dry run: 0 change(s) on 3 host(s)")


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
        "-name '*.key' -o -type f -name users.acl | "
        "sudo xargs stat -c '%a %U %G %n'",
    )
    rows = [line.split() for line in out.stdout.splitlines()]
    assert len(rows) >= 4, out.stdout + out.stderr
    for mode, _owner, _group, path in rows:
        assert int(mode, 8) & 0o077 == 0, f"{path} is {mode}"
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
    assert ok.stdout.startswith("cmdop_owner\n"), ok.stderr  # acts as the owner role
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
    for name in ("host2", "host3"):
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
    assert info["last_deploy"]["changes"] > 0
    by_host = {h["host"]: h for h in info["hosts"]}
    control = {c["component"]: c for c in by_host["host1"]["components"]}
    for component in ("postgres", "redis", "control_plane", "nginx"):
        assert control[component]["state"] == "active", control[component]
        assert control[component]["version"], component
    assert "nginx-host1" in by_host["host1"]["certificates"]
    for name in ("host2", "host3"):
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
    last = out.stderr.strip().splitlines()[-1]  # above it, pyinfra's own "Could not connect"
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
