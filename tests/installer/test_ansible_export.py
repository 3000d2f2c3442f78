"""`cmdop-install export-ansible`: an Ansible inventory, vault-encrypted host_vars, and the
roles' renderer giving the same bytes as `cmdop-install render`, file by file.

Everything is read back with Ansible's own vault and YAML loader (ansible-core from the
dev group), as ansible-playbook reads it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import VaultLib, VaultSecret
from cmdop_install import ansible_export
from cmdop_install.cli import main
from cmdop_install.errors import UserError
from cmdop_install.inventory import GROUPS, Host
from cmdop_install.sitedir import SiteDir

from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.unit

ROLES = Path(__file__).resolve().parents[2] / "roles"
sys.path.insert(0, str(ROLES / "cmdop_common" / "filter_plugins"))
import cmdop_render  # noqa: E402 - the roles' filter plugin, loaded as Ansible loads it

PASSWORD = b"test vault password"
VENV_BIN = Path(sys.executable).parent


def _vault_load(path: Path, password: bytes = PASSWORD):
    """A vars file as ansible-playbook loads host_vars (decrypted, trusted as templates)."""
    loader = DataLoader()
    loader.set_vault_secrets([("default", VaultSecret(password))])
    return loader.load_from_file(str(path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A site with every group (Centrifugo on: its files too), exported once."""
    base = tmp_path_factory.mktemp("export")
    binary = base / "centrifugo"
    binary.write_bytes(b"")
    with key_env():
        site_dir = make_site(base / "site", {"centrifugo.binary": str(binary)}, agents=True,
                             centrifugo=True)
        password_file = base / "vault-pass"
        password_file.write_bytes(PASSWORD + b"\n")
        password_file.chmod(0o600)
        hosts = ansible_export.export_site(site_dir, base / "out", password_file)
        site = SiteDir.load(site_dir)
        site.secrets  # noqa: B018 - read while the key is set
    return base / "out", site, hosts


def test_vault_text_is_what_ansible_vault_decrypts():
    plaintext = b"a: 1\n" * 100 + b"odd length"
    text = ansible_export.vault_encrypt(plaintext, PASSWORD)
    assert text.startswith(b"$ANSIBLE_VAULT;1.1;AES256\n")
    assert VaultLib([("default", VaultSecret(PASSWORD))]).decrypt(text) == plaintext
    with pytest.raises(Exception, match="Decryption failed"):
        VaultLib([("default", VaultSecret(b"wrong"))]).decrypt(text)


def test_inventory_has_the_groups_of_inventory_py(exported):
    out, site, hosts = exported
    inventory = yaml.safe_load((out / "inventory.yml").read_text())
    children = inventory["all"]["children"]
    assert set(children) == set(GROUPS)
    for group in GROUPS:
        assert list(children[group]["hosts"]) == [h.name for h in site.inventory.groups[group]]
    assert children["agents"]["hosts"]["agent1"] == {"ansible_host": "127.0.0.2"}
    common = yaml.safe_load((out / "group_vars" / "all.yml").read_text())
    assert common["cmdop_control_plane_workspace"] == site.name
    # the templates the context was built for travel with it
    assert Path(common["cmdop_common_templates_dir"]) == (out / "templates").absolute()
    assert (out / "templates" / "postgres" / "pg_hba.conf.j2").read_bytes() == (
        ansible_export.render.templates_dir() / "postgres" / "pg_hba.conf.j2").read_bytes()
    assert common["cmdop_control_plane_manage"].endswith("/bin/cmdop-server")
    assert sorted(hosts) == sorted(h.name for h in site.inventory.hosts())


def test_no_secret_in_clear_anywhere(exported):
    out, site, _ = exported
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in written if "templates" not in p.relative_to(out).parts} \
        == {"inventory.yml", "all.yml", "node1.yml", "agent1.yml"}
    values = [v.encode() for v in site.secrets.values() if len(v) >= 12]
    assert values
    for path in written:
        data = path.read_bytes()
        assert not any(v in data for v in values), path
        assert b"PRIVATE KEY" not in data, path
        if path.parent.name == "host_vars":
            assert data.startswith(b"$ANSIBLE_VAULT;1.1;AES256\n")
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "host_vars").stat().st_mode) == 0o700


def test_files_are_the_render_manifest(exported):
    out, site, hosts = exported
    for name in hosts:
        exported_files = _vault_load(out / "host_vars" / f"{name}.yml")["cmdop_files"]
        manifest = [f.manifest_entry() for f in site.files(name)]
        assert [{k: e[k] for k in ("path", "mode", "owner", "group")} for e in exported_files] \
            == [{k: m[k] for k in ("path", "mode", "owner", "group")} for m in manifest]


def test_roles_render_every_file_byte_for_byte(exported):
    """The roles' renderer on the vault data as Ansible loads it equals `render`, file by file."""
    out, site, hosts = exported
    templates = str(out / "templates")
    compared = 0
    for name in hosts:
        data = _vault_load(out / "host_vars" / f"{name}.yml")
        for entry, rendered in zip(data["cmdop_files"], site.files(name), strict=True):
            if entry["template"]:
                content = cmdop_render.cmdop_render(
                    data["cmdop_context"], entry["template"], templates, entry["template_vars"])
            else:
                content = entry["content"]
            assert content.encode() == rendered.content, (name, rendered.path)
            compared += 1
    assert compared == sum(len(site.files(n)) for n in hosts)
    templates = {e["template"] for n in hosts
                 for e in _vault_load(out / "host_vars" / f"{n}.yml")["cmdop_files"]}
    assert "centrifugo/config.json.j2" in templates
    assert "systemd/cmdop-agent.service.j2" in templates


def test_a_secret_that_looks_like_a_template_stays_data(tmp_path):
    """Ansible never evaluates exported strings (``!unsafe``), nor turns them into numbers;
    without the tag, ansible-playbook would (the second value)."""
    value = {"password": "{{ 7 * 6 }}", "mode": "0600", "empty": ""}
    (tmp_path / "vars.yml").write_text(
        f"tagged: {ansible_export.unsafe_yaml(value)}\nplain: {json.dumps(value)}\n")
    out = tmp_path / "out.json"
    (tmp_path / "play.yml").write_text(json.dumps([{
        "name": "Write", "hosts": "localhost", "gather_facts": False,
        "vars_files": ["vars.yml"],
        "tasks": [{"name": "Write", "ansible.builtin.copy": {
            "content": "{{ {'tagged': tagged, 'plain': plain.password} | to_json }}",
            "dest": str(out), "mode": "0600"}}],
    }]))
    result = subprocess.run([str(VENV_BIN / "ansible-playbook"), str(tmp_path / "play.yml")],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ANSIBLE_LOCALHOST_WARNING": "false"})
    assert result.returncode == 0, result.stdout[-2000:]
    assert json.loads(out.read_text()) == {"tagged": value, "plain": 42}


def test_the_cli_exports_and_makes_a_private_password_file(tmp_path, capsys):
    with key_env():
        site_dir = make_site(tmp_path / "site")
        password_file = tmp_path / "vault-pass"
        assert main(["export-ansible", str(site_dir), str(tmp_path / "out"),
                     "--vault-password-file", str(password_file)]) == 0
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_bytes().strip()
    assert len(password) >= 40
    assert _vault_load(tmp_path / "out" / "host_vars" / "node1.yml", password)["cmdop_context"]
    printed = capsys.readouterr()
    assert "exported 1 host(s)" in printed.out
    assert password.decode() not in printed.out + printed.err


def test_a_readable_password_file_is_refused(tmp_path):
    password_file = tmp_path / "vault-pass"
    password_file.write_text("x\n")
    os.chmod(password_file, 0o644)
    with pytest.raises(UserError, match=r"readable by others; `chmod 600"):
        ansible_export.read_vault_password(password_file)


def test_exported_paths_cover_every_template():
    """Every ``paths.<name>`` a template uses is in the exported context."""
    names = ansible_export.template_paths()
    assert {"agent_etc", "cmdop_tls", "pg_tls"} <= set(names)
    context = ansible_export.plain_context({"paths": ansible_export.render.Paths()})
    assert json.dumps(context) and set(context["paths"]) == set(names)


def test_pyinfra_connection_data_becomes_ansible_variables():
    host = Host("web1", "192.0.2.7", "10.0.0.7", data={
        "ssh_user": "deploy", "ssh_key": "/keys/id", "ssh_port": 2222, "_sudo": True,
        "ssh_known_hosts_file": "/keys/known_hosts", "ssh_strict_host_key_checking": "yes"})
    assert ansible_export.connection_vars(host) == {
        "ansible_host": "192.0.2.7", "ansible_user": "deploy", "ansible_port": 2222,
        "ansible_ssh_private_key_file": "/keys/id",
        "ansible_ssh_common_args": "-o UserKnownHostsFile=/keys/known_hosts "
                                   "-o StrictHostKeyChecking=yes",
    }
