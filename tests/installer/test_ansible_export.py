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
from cmdop_install.deploy import write_payload
from cmdop_install.errors import UserError
from cmdop_install.hashing import redis_acl_hash
from cmdop_install.inventory import GROUPS, Host
from cmdop_install.secrets import SecretStore
from cmdop_install.sitedir import SiteDir

from tests.support.sites import TEST_KEY, key_env, make_site, rotation_step

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


def _small_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A signed bundle of small stand-in files (the real build is the lab tier's) and its
    public key."""
    from cmdop_install import bundle

    key = tmp_path / "keys" / "sign.key"
    pub = bundle.keygen(key)
    src = tmp_path / "bundle-src"
    src.mkdir()
    files = {}
    for name in ("debs/nginx_1_amd64.deb", "debs/Packages", "sbom.cdx.json",
                 "wheels/cmdop-server/cmdop_server-0.2.0-py3-none-any.whl",
                 "wheels/cmdop-server/requirements.txt",
                 "wheels/cmdop-agent/cmdop_agent-0.3.0-py3-none-any.whl",
                 "wheels/cmdop-agent/requirements.txt"):
        path = src / name.replace("/", "_")
        path.write_text(f"stand-in for {name}\n")
        files[name] = path
    out = tmp_path / "cmdop.bundle"
    bundle.write_bundle(out, files, {"target": "debian-12-amd64"}, key)
    return out, pub


def test_an_export_from_a_bundle_points_the_roles_at_it_alone(tmp_path):
    """group_vars name the verified bundle and carry deploy --bundle's host commands; the
    wheelhouses are the bundle's, copied out of it and keyed by its signed manifest."""
    import hashlib
    import tarfile

    from cmdop_install import bundle
    from cmdop_install.deploys import ops

    made, pub = _small_bundle(tmp_path)
    password_file = tmp_path / "vault-pass"
    with key_env():
        site_dir = make_site(tmp_path / "site", {"bundle.pubkey": str(pub)}, agents=True)
        assert main(["export-ansible", str(site_dir), str(tmp_path / "out"),
                     "--vault-password-file", str(password_file), "--bundle", str(made)]) == 0
    out = (tmp_path / "out").absolute()
    common = _vault_load(out / "group_vars" / "all.yml", b"unused")
    with tarfile.open(made) as tar:
        signed = tar.extractfile(bundle.MANIFEST).read()  # type: ignore[union-attr]
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                   if m.name.startswith("wheels/")}
    digest = hashlib.sha256(signed).hexdigest()
    facts = {"digest": digest, "path": str(made.resolve()), "count": 7,
             "manifest": str(out / "bundle" / bundle.MANIFEST),
             "sums": str(out / "bundle" / "SHA256SUMS")}
    assert common["cmdop_common_bundle"] == {
        **facts,
        "folder": ops.bundle_folder(facts),
        "prepare": ops.bundle_prepare_command(facts),
        "checks": ops.bundle_check_commands(facts),
        "apt": ops.bundle_apt_command(facts),
        "install": ops.bundle_install_command(facts),
    }
    assert (out / "bundle" / bundle.MANIFEST).read_bytes() == signed
    assert (out / "bundle" / "SHA256SUMS").read_text() == bundle.sha256sums(json.loads(signed))
    assert "-o Dir::Etc::sourceparts=- " in common["cmdop_common_bundle"]["apt"]
    server, agent = common["cmdop_control_plane_wheelhouse"], common["cmdop_agent_release"]
    assert server["key"] == f"cmdop-server-{digest[:16]}"
    assert server["package_wheel"] == "cmdop_server-0.2.0-py3-none-any.whl"
    assert agent["version"] == "0.3.0" and agent["switch"] is False
    assert agent["wheelhouse"]["key"] == f"cmdop-agent-{digest[:16]}"
    for package, wheelhouse in (("cmdop-server", server), ("cmdop-agent", agent["wheelhouse"])):
        assert Path(wheelhouse["path"]) == out / "bundle" / "wheels" / package
        assert {name: (Path(wheelhouse["path"]) / name).read_bytes()
                for name in wheelhouse["files"]} == {
            name.rsplit("/", 1)[1]: data for name, data in members.items()
            if name.startswith(f"wheels/{package}/")}

    # exported again without it: the roles use the host's apt sources, nothing of it is left
    with key_env():
        ansible_export.export_site(site_dir, out, password_file)
    common = _vault_load(out / "group_vars" / "all.yml", b"unused")
    assert "cmdop_common_bundle" not in common
    assert not (out / "bundle").exists()
    assert common["cmdop_control_plane_wheelhouse"]["key"].startswith("cmdop-server-")
    assert not common["cmdop_control_plane_wheelhouse"]["key"].endswith(digest[:16])


@pytest.mark.parametrize("tamper", ["flip", "other_key"])
def test_an_export_refuses_a_tampered_bundle_in_one_line_writing_nothing(tmp_path, tamper,
                                                                          capsys):
    from cmdop_install import bundle

    made, pub = _small_bundle(tmp_path)
    raw = bytearray(made.read_bytes())
    if tamper == "flip":
        raw[raw.index(b"stand-in for debs/nginx")] ^= 0x01
        why = "debs/nginx_1_amd64.deb: changed"
    else:
        other = tmp_path / "other" / "sign.key"
        pub.unlink()
        pub.write_bytes(bundle.keygen(other).read_bytes())
        why = f"{bundle.MANIFEST} is not signed by"
    made.write_bytes(bytes(raw))
    password_file = tmp_path / "vault-pass"
    with key_env():
        site_dir = make_site(tmp_path / "site", {"bundle.pubkey": str(pub)}, agents=True)
        assert main(["export-ansible", str(site_dir), str(tmp_path / "out"),
                     "--vault-password-file", str(password_file), "--bundle", str(made)]) == 1
    printed = capsys.readouterr()
    assert printed.err.startswith(f"cmdop-install: error: {made}: {why}"), printed.err
    assert len(printed.err.splitlines()) == 1 and printed.out == ""
    assert not (tmp_path / "out").exists() and not password_file.exists()


def _exported_state(site_dir: Path, out: Path) -> dict:
    """What an export of ``site_dir`` gives node1 (credentials, logins, the app's Redis
    hashes), each checked to be exactly what `cmdop-install deploy` would send."""
    ansible_export.export_site(site_dir, out, out.parent / "vault-pass")
    data = _vault_load(out / "host_vars" / "node1.yml", (out.parent / "vault-pass").read_bytes()
                       .strip())
    site = SiteDir.load(site_dir)
    files = {}
    for entry, rendered in zip(data["cmdop_files"], site.files("node1"), strict=True):
        content = cmdop_render.cmdop_render(
            data["cmdop_context"], entry["template"], str(out / "templates"),
            entry["template_vars"]) if entry["template"] else entry["content"]
        assert content.encode() == rendered.content, entry["path"]
        files[entry["path"]] = content
    write_payload(out.parent / "payload", site, "node1")
    payload = json.loads((out.parent / "payload" / "postgres.json").read_text())
    passwords = data["cmdop_postgres_facts"]["passwords"]
    assert [(p["role"], p["verifier_md5"]) for p in passwords] == [
        (p["name"], p["verifier_md5"]) for p in payload["passwords"]]
    acl = {line.split()[1]: sorted(w[1:] for w in line.split() if w.startswith("#"))
           for line in files["/etc/redis/users.acl"].splitlines()}
    return {"db_password": files["/etc/cmdop/credentials/db_password"].strip(),
            "redis_password": files["/etc/cmdop/credentials/redis_password"].strip(),
            "logins": sorted(p["role"] for p in passwords if p["verifier_md5"]
                             and p["role"] in ("cmdop_blue", "cmdop_green")),
            "nulled": sorted(p["role"] for p in passwords if "PASSWORD NULL" in p["sql"]),
            "app_acl": acl["testsite-app"]}


def test_an_export_after_a_rotation_follows_the_rotation_state(tmp_path, monkeypatch):
    """The app's login and the Redis passwords Redis admits come from rotation.json as for a
    deploy: an Ansible run mid-rotation or after one keeps the app on the login that has a
    password, and never gives back a password the rotation destroyed."""
    from cmdop_install import rotation
    from cmdop_install.runner import HostResult, RunResult

    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    monkeypatch.setattr(rotation, "deploy_site", lambda site, limit=None: RunResult(
        hosts={"node1": HostResult("node1")}, dry_run=False))
    site_dir = make_site(tmp_path / "site")
    (tmp_path / "vault-pass").write_bytes(PASSWORD + b"\n")
    (tmp_path / "vault-pass").chmod(0o600)
    old = SecretStore.open(site_dir, "").values()
    rotation_step(site_dir, "rotate", ("postgres_password_blue", "redis_password_app"))
    new = SecretStore.open(site_dir, "").values()
    switched = _exported_state(site_dir, tmp_path / "switched")
    assert switched["db_password"] == new["postgres_password_green"]
    assert switched["logins"] == ["cmdop_blue", "cmdop_green"]
    assert switched["redis_password"] == new["redis_password_app"]
    assert switched["app_acl"] == sorted([redis_acl_hash(old["redis_password_app"]),
                                          redis_acl_hash(new["redis_password_app"])])

    rotation_step(site_dir, "finish", ())
    finished = _exported_state(site_dir, tmp_path / "finished")
    assert finished["db_password"] == new["postgres_password_green"]
    assert (finished["logins"], finished["nulled"]) == (["cmdop_green"], ["cmdop_blue"])
    assert finished["app_acl"] == [redis_acl_hash(new["redis_password_app"])]
