"""Rendering: golden files, modes/owners, the manifest, and the policy lint (check).

Golden files: tests/installer/golden/<host>/<path>. After an intended template change,
regenerate with ``CMDOP_UPDATE_GOLDEN=1 pytest tests/installer/test_site_render.py`` and
review the diff like code.
"""

import json
import os
import stat
from pathlib import Path

import pytest
from cmdop_install.check import check_inventory, lint_files
from cmdop_install.cli import main
from cmdop_install.errors import UserError
from cmdop_install.inventory import parse_inventory
from cmdop_install.render import MANAGED, RenderedFile, render_host
from cmdop_install.secrets import SPECS, SecretStore
from cmdop_install.site import default_site

from tests.support.sites import TEST_KEY, make_site

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
# obviously fake but policy-shaped values, so golden files can hold them
FAKE_SECRETS = {name: f"FAKE-{name}-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFG"
                for name in SPECS}


class FakePem(dict):
    def __missing__(self, name):
        kind = "PRIVATE KEY" if name.endswith(".key") else "CERTIFICATE"
        return f"-----BEGIN {kind}-----\nFAKE {name}\n-----END {kind}-----\n".encode()


def _site(**overrides):
    site = default_site("golden")
    site["centrifugo"]["binary"] = "/usr/local/bin/centrifugo"
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        site[section][key] = value
    return site


def _inventory(centrifugo_nodes=1):
    node1 = ("node1", {"ssh_hostname": "10.0.0.5", "dns_names": ["node1.internal"]})
    node2 = ("node2", {"ssh_hostname": "10.0.0.6"})
    cps = [node1, node2][:centrifugo_nodes]
    return parse_inventory({
        "postgres": [node1], "redis": [node1], "control_plane": cps, "centrifugo": cps,
        "agents": [("web1", {"ssh_hostname": "198.51.100.7"})],
    })


def _render(host, site=None, inventory=None):
    return render_host(site or _site(), inventory or _inventory(), host, FAKE_SECRETS,
                       FakePem())


@pytest.mark.parametrize("host", ["node1", "web1"])
def test_rendered_files_match_golden(host):
    files = _render(host)
    for f in files:
        if f.path.endswith((".crt", ".key")):
            continue  # the certificates are inputs, not rendered text
        golden = GOLDEN / host / f.path.lstrip("/")
        if os.environ.get("CMDOP_UPDATE_GOLDEN") == "1":
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes(f.content)
        assert golden.exists(), f"no golden file for {f.path} (CMDOP_UPDATE_GOLDEN=1)"
        assert f.content.decode() == golden.read_text(), (
            f"{f.path} differs from {golden} (an intended template change? regenerate with "
            "CMDOP_UPDATE_GOLDEN=1 pytest tests/installer/test_site_render.py and review)")
    manifest = GOLDEN / host / "manifest.json"
    entries = [f.manifest_entry() for f in files]
    if os.environ.get("CMDOP_UPDATE_GOLDEN") == "1":
        manifest.write_text(json.dumps(entries, indent=2) + "\n")
    assert entries == json.loads(manifest.read_text())


def test_every_template_file_says_it_is_managed():
    for f in _render("node1") + _render("web1"):
        raw = f.path.endswith((".crt", ".key", ".json", ".acl")) or "/credentials/" in f.path
        if not raw:
            assert MANAGED in f.content.decode().splitlines()[0], f.path


def test_secrets_only_in_private_files_and_private_keys_never_world_readable():
    for f in _render("node1"):
        text = f.content.decode()
        holds = [n for n, v in FAKE_SECRETS.items() if v in text]
        if holds or "PRIVATE KEY" in text:
            assert f.mode & 0o007 == 0, (f.path, oct(f.mode))
            assert f.secret, f.path


def test_clean_render_has_no_findings():
    for host in ("node1", "web1"):
        assert lint_files(_render(host), FAKE_SECRETS) == []


def test_centrifugo_uses_redis_over_mtls_only_with_several_nodes():
    one = json.loads(next(f for f in _render("node1") if f.path.endswith("config.json")).content)
    assert one["engine"] == {"type": "memory"}
    two = _render("node1", inventory=_inventory(centrifugo_nodes=2))
    conf = json.loads(next(f for f in two if f.path.endswith("config.json")).content)
    redis = conf["engine"]["redis"]
    assert redis["address"] == ["rediss://10.0.0.5:6379/0"]
    assert redis["tls"]["enabled"] and redis["tls"]["cert_pem"].endswith("centrifugo.crt")
    assert conf["admin"] == {"enabled": False}
    for ns in conf["channel"]["namespaces"]:
        assert not ns["allow_publish_for_client"] and not ns["allow_subscribe_for_client"]
    acl = next(f for f in two if f.path.endswith("users.acl")).content.decode()
    assert "user golden-centrifugo on #" in acl


def _mutate(files, suffix, old, new, mode=None):
    out = []
    for f in files:
        if f.path.endswith(suffix):
            text = f.content.decode()
            assert old in text, (suffix, old)
            f = RenderedFile(f.path, text.replace(old, new, 1).encode(),
                             mode if mode is not None else f.mode, f.owner, f.group, f.secret)
        out.append(f)
    return out


@pytest.mark.parametrize("suffix, old, new, finding", [
    ("pg_hba.conf", "scram-sha-256", "md5", "method 'md5'"),
    ("pg_hba.conf", "scram-sha-256", "trust", "method 'trust'"),
    ("pg_hba.conf", "hostssl    cmdop", "host    cmdop", "line type 'host'"),
    ("pg_hba.conf", "hostnossl  all       all   ::/0               reject", "",
     "no 'hostnossl all all ::/0 reject'"),
    ("60-cmdop.conf", "'TLSv1.3'", "'TLSv1.2'", "ssl_min_protocol_version is not TLSv1.3"),
    ("60-cmdop.conf", "listen_addresses = '10.0.0.5'", "listen_addresses = '*'",
     "every interface"),
    ("redis.conf", "port 0", "port 6379", "port is not 0"),
    ("redis.conf", 'tls-protocols "TLSv1.3"', 'tls-protocols "TLSv1.2 TLSv1.3"',
     'tls-protocols is not "TLSv1.3"'),
    ("redis.conf", "tls-auth-clients yes", "tls-auth-clients no", "tls-auth-clients is no"),
    ("users.acl", "user default off", "user default on nopass", "default user is not off"),
    ("users.acl", " -@admin -@dangerous", "", "+@all without -@admin -@dangerous"),
    ("users.acl", "on #", "on >plain-password-here ~* #", "plaintext password"),
    ("conf.d/cmdop.conf", "ssl_protocols TLSv1.3;", "ssl_protocols TLSv1.2 TLSv1.3;",
     "ssl_protocols is not TLSv1.3 only"),
    ("conf.d/cmdop.conf", "server_tokens off;",
     'server_tokens off;\nadd_header Strict-Transport-Security "max-age=1";',
     "add_header Strict-Transport-Security: the app sends it"),
    ("cmdop-server.service", "ProtectSystem=strict", "ProtectSystem=full",
     "ProtectSystem=strict missing"),
    ("config.json", '"enabled": false', '"enabled": true', "admin.enabled is true"),
    ("server.toml", "# managed by cmdop-install", "# hand edited", "first line must say"),
])
def test_lint_catches_policy_violations(suffix, old, new, finding):
    findings = lint_files(_mutate(_render("node1"), suffix, old, new), FAKE_SECRETS)
    assert any(finding in f and suffix in f for f in findings), findings


def test_lint_catches_a_secret_in_a_world_readable_file():
    secret = FAKE_SECRETS["redis_password_app"]
    files = _mutate(_render("node1"), "server.toml", "[redis]", f"[redis]\npassword = '{secret}'")
    findings = lint_files(files, FAKE_SECRETS)
    assert any("server.toml: mode 0644 is world-readable but holds redis_password_app" in f
               for f in findings)
    assert not any(secret in f for f in findings)
    files = _mutate(_render("node1"), "credentials/db_password", "FAKE", "FAKE", mode=0o644)
    assert any("credentials/db_password: mode 0644" in f for f in lint_files(files, FAKE_SECRETS))


def test_inventory_findings():
    node1 = ("node1", {"ssh_hostname": "10.0.0.5"})
    twin = ("twin", {"ssh_hostname": "10.0.0.5"})
    inv = parse_inventory({"postgres": [node1], "redis": [], "control_plane": [node1, twin],
                           "centrifugo": [("cf", {"ssh_hostname": "10.0.0.9"})]})
    findings = check_inventory(_site(), inv)
    assert "inventory.py: redis: no host (add one, e.g. redis = [_node1])" in findings
    assert ("inventory.py: node1 and twin share the address 10.0.0.5 "
            "(one host, one name: merge them)") in findings
    assert any("centrifugo: cf is not a control_plane host" in f for f in findings)


def test_cli_render_writes_files_modes_and_a_manifest_without_secrets(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site = make_site(tmp_path / "site")
    values = SecretStore.open(site, "").values()
    out = tmp_path / "out"
    assert main(["render", str(site), "--host", "node1", "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    manifest_text = (out / "manifest.json").read_text()
    manifest = json.loads(manifest_text)
    for entry in manifest["hosts"]["node1"]:
        written = out / "node1" / entry["path"].lstrip("/")
        assert f"{stat.S_IMODE(written.stat().st_mode):04o}" == entry["mode"]
        assert set(entry) == {"path", "mode", "owner", "group", "sha256"}
    secret_entry = next(e for e in manifest["hosts"]["node1"]
                        if e["path"] == "/etc/cmdop/credentials/secret_key")
    # the service's own file: it reads it in place on every reload (rotation)
    assert (secret_entry["mode"], secret_entry["owner"]) == ("0400", "cmdop")
    leaked = [n for n, v in values.items() if v in manifest_text + stdout + stderr]
    assert leaked == []
    assert main(["check", str(site)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout == "check: ok\n"
    assert not [n for n, v in values.items() if v in stdout + stderr]


def test_cli_check_reports_findings_one_per_line_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site = make_site(tmp_path / "site")
    inv = (site / "inventory.py").read_text().replace("redis = [_node1]", "redis = []")
    (site / "inventory.py").write_text(inv)
    assert main(["check", str(site)]) == 1
    stdout, stderr = capsys.readouterr()
    assert stdout == (
        "inventory.py: redis: no host (add one, e.g. redis = [_node1])\n"
        "warning: pki/redis-node1.crt: inventory.py no longer needs it (a removed host or role: "
        "delete pki/redis-node1.crt and .key)\n")
    assert stderr == "cmdop-install: error: check: 1 problem(s) found\n"


def test_inventory_typo_group_is_warned_and_bad_addresses_refused():
    node1 = ("node1", {"ssh_hostname": "10.0.0.5"})
    inv = parse_inventory({"postgres": [node1], "redis": [node1], "control_plane": [node1],
                           "postgress": [node1]})
    assert any(f.startswith("warning: inventory.py: postgress: not a group")
               for f in check_inventory(_site(), inv))
    for bad in ({"ssh_hostname": "10.0.0.5; rm -rf /"}, {"ssh_hostname": 5},
                {"ssh_hostname": "10.0.0.5", "dns_names": "x.example"}):
        with pytest.raises(UserError, match=r"inventory.py: postgres\[0\]: "):
            parse_inventory({"postgres": [("node1", bad)]})
