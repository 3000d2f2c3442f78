"""`cmdop-install export-ansible SITE_DIR OUT`: the site as inputs for roles/ and site.yml.

OUT/inventory.yml is an Ansible YAML inventory with the groups of inventory.py and how to
reach each host; OUT/group_vars/all.yml holds the site-wide values the roles need (the
wheelhouses, the management command lines; no secret), OUT/templates/ a copy of the
templates the context was built for. OUT/host_vars/<host>.yml is
ansible-vault encrypted (format 1.1, AES256) and holds everything the roles need for that
host: the variables its templates see (``cmdop_context``, the same dict ``cmdop-install
render`` renders with), the list of its files with path, mode, owner and group
(``cmdop_files``, the render manifest) and the per-component data the pyinfra deploys
compare against. Nothing secret is ever written in clear: the vault text is built in
memory and written 0600.

Every value in the vault file carries Ansible's ``!unsafe`` tag, so a secret that happens
to contain ``{{`` is data, never a template.

With an offline bundle (``--bundle``, or site.toml ``[bundle] file``) the bundle is verified
first, by ``bundle.opened`` as for a deploy, and nothing is written unless it passes.
OUT/bundle/ then holds its signed manifest, the ``sha256sum`` lines of its files and the
wheelhouses the roles install from; ``cmdop_common_bundle`` in group_vars names the bundle
and carries the host commands of ``deploys.ops`` (the same checks and apt command lines as
``deploy --bundle``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets as pysecrets
import shutil
from pathlib import Path

import jinja2
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from cmdop_install import agent_releases, bundle, check, manage, pgsql, render, rotation_state
from cmdop_install.errors import UserError
from cmdop_install.fsutil import make_dir, write_atomic
from cmdop_install.inventory import GROUPS, Host
from cmdop_install.sitedir import SiteDir

VAULT_HEADER = b"$ANSIBLE_VAULT;1.1;AES256"
MANAGED = "# managed by cmdop-install export-ansible, do not edit: export the site again\n"
# pyinfra connector keys -> Ansible connection variables
CONNECTION_VARS = {
    "ssh_user": "ansible_user",
    "ssh_port": "ansible_port",
    "ssh_key": "ansible_ssh_private_key_file",
}


def vault_encrypt(plaintext: bytes, password: bytes) -> bytes:
    """ansible-vault's format 1.1 (``ansible.parsing.vault.VaultAES256``): PBKDF2-SHA256
    (10000 rounds, 32-byte salt) gives the AES-256-CTR key, the HMAC-SHA256 key and the IV;
    the plaintext is PKCS7-padded; salt, HMAC and ciphertext are hex, then hex again."""
    salt = os.urandom(32)
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=80, salt=salt, iterations=10000)
    material = kdf.derive(password)
    key, mac_key, iv = material[:32], material[32:64], material[64:]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    mac = hmac.new(mac_key, ciphertext, hashlib.sha256).hexdigest().encode()
    inner = salt.hex().encode() + b"\n" + mac + b"\n" + ciphertext.hex().encode()
    outer = inner.hex().encode()
    lines = [outer[i : i + 80] for i in range(0, len(outer), 80)]
    return VAULT_HEADER + b"\n" + b"\n".join(lines) + b"\n"


def unsafe_yaml(value: dict | list) -> str:
    """``value`` as YAML (JSON is YAML) under one ``!unsafe`` tag, which Ansible carries down
    to every string inside. Only a mapping or a list: Ansible resolves a tagged scalar as if
    unquoted (``!unsafe "0600"`` would load as the number 384)."""
    if not isinstance(value, dict | list):
        raise TypeError(f"export a mapping or a list, not a {type(value).__name__}")
    return "!unsafe " + json.dumps(value)


def template_paths() -> list[str]:
    """Every ``paths.<name>`` the templates use (the context ships them as a plain dict)."""
    env = render.environment()
    names: set[str] = set()
    for name in env.list_templates():
        source = env.loader.get_source(env, name)[0]  # type: ignore[union-attr]
        for node in env.parse(source).find_all(jinja2.nodes.Getattr):
            if isinstance(node.node, jinja2.nodes.Name) and node.node.name == "paths":
                names.add(node.attr)
    return sorted(names)


def _host_dict(host: Host) -> dict:
    return {"name": host.name, "address": host.address, "ssh_hostname": host.ssh_hostname,
            "dns_names": list(host.dns_names)}


def plain_context(context: dict) -> dict:
    """The render context as plain data: Site is a dict already, Hosts and Paths become dicts."""
    out = {}
    for key, value in context.items():
        if isinstance(value, Host):
            value = _host_dict(value)
        elif isinstance(value, render.Paths):
            value = {name: getattr(value, name) for name in template_paths()}
        out[key] = value
    return json.loads(json.dumps(out))


def file_entries(files: list[render.RenderedFile]) -> list[dict]:
    """The render manifest with, per file, its template (and variables) or its content."""
    entries = []
    for f in files:
        entry = {"path": f.path, "mode": f"{f.mode:04o}", "owner": f.owner, "group": f.group,
                 "secret": f.secret, "template": f.template,
                 "template_vars": dict(f.template_vars)}
        if not f.template:
            entry["content"] = f.content.decode()
        entries.append(entry)
    return entries


def postgres_data(site: SiteDir, host: Host) -> dict:
    """What the postgres role compares against: the SCRAM verifiers of the login roles (the
    passwords themselves never leave this machine), NULL for a blue/green login that must not
    log in. Which logins may, and which is active, is the rotation state's (rotation.json),
    as for ``cmdop-install deploy``: an export after a rotation keeps the app on its login."""
    from cmdop_install.deploy import login_passwords

    logins = rotation_state.logins_with_password(site.path, site.config)
    return {"listen_addresses": host.address,
            "passwords": login_passwords(site.config, site.secrets, logins)}


def host_vars(site: SiteDir, host_name: str) -> dict:
    """What the vault file of ``host_name`` holds (secrets included)."""
    roles = site.inventory.roles_of(host_name)
    context = render.template_context(site.config, site.inventory, host_name, site.secrets)
    data: dict = {
        "cmdop_context": plain_context(context),
        "cmdop_files": file_entries(site.files(host_name)),
    }
    if "postgres" in roles:
        data["cmdop_postgres_facts"] = postgres_data(site, site.inventory.host(host_name))
    if "control_plane" in roles:
        data["cmdop_control_plane_secrets"] = {"owner_password": site.secrets["owner_password"]}
    return data


def group_vars(site, wheels: dict, templates: Path) -> dict:
    """Site-wide, non-secret: where the templates are, the wheelhouses, the first Owner."""
    from cmdop_install.deploys.redis import acl_load_command, tls_reload_command

    return {
        # the export's own copy: the templates of the installer that built the context
        "cmdop_common_templates_dir": str(templates),
        "cmdop_site_name": site["site"]["name"],
        "cmdop_postgres_major": site["postgres"]["major"],
        "cmdop_postgres_roles_check_sql": pgsql.roles_check(render.postgres_names(site)),
        # the pyinfra deploy's command: no password in it, Redis answers OK or the run fails
        "cmdop_redis_acl_load": acl_load_command(render.Paths()),
        "cmdop_redis_tls_reload": tls_reload_command(render.Paths()),
        "cmdop_control_plane_wheelhouse": wheels.get("control_plane"),
        # management commands as the service runs them; the roles append the arguments
        "cmdop_control_plane_manage": manage.manage_command("").rstrip(),
        "cmdop_control_plane_manage_audit": manage.manage_command("", audit_admin=True).rstrip(),
        "cmdop_control_plane_owner_email": site["site"]["owner_email"]
        or f"admin@{site['site']['domain']}",
        "cmdop_control_plane_workspace": site["site"]["name"],
        "cmdop_control_plane_audit_app_role": render.postgres_names(site)["app"],
        "cmdop_control_plane_audit_retention_days": site["audit"]["retention_days"],
        "cmdop_agent_user": site["agent"]["user"],
        "cmdop_agent_release": wheels.get("agents"),
    }


def bundle_vars(offline: bundle.Offline, folder: Path) -> dict:
    """``cmdop_common_bundle``: the verified bundle for the roles. Its manifest and sums are the
    copies in ``folder`` (the export's own); the host commands are ``deploy --bundle``'s."""
    from cmdop_install.deploys import ops

    facts = {**offline.host_facts, "manifest": str(folder / bundle.MANIFEST),
             "sums": str(folder / "SHA256SUMS")}
    return {
        **facts,
        "folder": ops.bundle_folder(facts),
        "prepare": ops.bundle_prepare_command(facts),
        "checks": ops.bundle_check_commands(facts),
        "apt": ops.bundle_apt_command(facts),
        "install": ops.bundle_install_command(facts),
    }


def _bundle_wheels(offline: bundle.Offline, package: str, folder: Path) -> dict:
    """The bundle's wheelhouse of ``package`` as a copy in ``folder``/wheels (the roles copy
    the wheels from the controller)."""
    facts = offline.wheelhouse(package)
    target = folder / "wheels" / package
    shutil.copytree(facts["path"], target)
    return {**facts, "path": str(target)}


def read_vault_password(path: Path) -> bytes:
    """The vault password from ``path``; a missing file is made (0600, 256 random bits)."""
    path = Path(path)
    if not path.exists():
        write_atomic(path, (pysecrets.token_urlsafe(32) + "\n").encode(), 0o600)
    if path.stat().st_mode & 0o077:
        raise UserError(f"{path}: readable by others; `chmod 600 {path}` and rerun")
    password = path.read_bytes().strip()
    if not password:
        raise UserError(f"{path}: empty; put the vault password on its first line")
    return password


def connection_vars(host: Host) -> dict:
    """How Ansible reaches ``host``: its pyinfra connection data as Ansible variables."""
    data = host.data
    conn = {"ansible_host": host.ssh_hostname}
    conn.update({CONNECTION_VARS[k]: v for k, v in data.items() if k in CONNECTION_VARS})
    ssh_args = []
    if data.get("ssh_known_hosts_file"):
        ssh_args.append(f"-o UserKnownHostsFile={data['ssh_known_hosts_file']}")
    if data.get("ssh_strict_host_key_checking"):
        ssh_args.append(f"-o StrictHostKeyChecking={data['ssh_strict_host_key_checking']}")
    if ssh_args:
        conn["ansible_ssh_common_args"] = " ".join(ssh_args)
    return conn


def inventory_yaml(inventory) -> str:
    """The Ansible inventory: the same groups as inventory.py, and how to reach each host."""
    children = {group: {"hosts": {h.name: connection_vars(h)
                                  for h in inventory.groups.get(group, [])}}
                for group in GROUPS}
    return MANAGED + json.dumps({"all": {"children": children}}, indent=2) + "\n"


def export_site(site_dir: Path, out: Path, vault_password_file: Path,
                bundle_file: Path | None = None) -> list[str]:
    """Write OUT/inventory.yml and OUT/host_vars/<host>.yml (vault); returns the host names.
    With a bundle (``bundle_file`` or site.toml ``[bundle] file``) the roles install every
    package from it; it is verified before anything is written."""
    site = SiteDir.load(site_dir)
    with bundle.opened(site.config, bundle_file) as offline:
        return _export(site, Path(out), vault_password_file, offline)


def _export(site: SiteDir, out: Path, vault_password_file: Path,
            offline: bundle.Offline | None) -> list[str]:
    from cmdop_install.deploy import wheelhouse_facts

    site.complete()  # as deploy and render do: missing secrets, the leaves the inventory needs
    check.refuse_on_problems(site, "exported")
    password = read_vault_password(vault_password_file)
    inventory = site.inventory
    vaults = {}
    for host in inventory.hosts():
        document = host_vars(site, host.name)
        text = "".join(f"{key}: {unsafe_yaml(value)}\n" for key, value in document.items())
        vaults[host.name] = vault_encrypt(("---\n" + text).encode(), password)
    make_dir(out, 0o700)
    # the bundle's copies: absolute, as ansible-playbook may run from another folder
    folder = (out / "bundle").absolute()
    shutil.rmtree(folder, ignore_errors=True)
    wheels: dict = {"control_plane": None, "agents": None}
    if offline is not None:
        make_dir(folder, 0o755)
        shutil.copyfile(offline.host_facts["manifest"], folder / bundle.MANIFEST)
        shutil.copyfile(offline.host_facts["sums"], folder / "SHA256SUMS")
        if inventory.groups["control_plane"]:
            wheels["control_plane"] = _bundle_wheels(offline, "cmdop-server", folder)
        if inventory.groups["agents"]:
            release = offline.agent_release(None)
            wheels["agents"] = {**release.facts(switch=False),
                                "wheelhouse": _bundle_wheels(offline, "cmdop-agent", folder)}
    else:
        if inventory.groups["control_plane"]:
            wheels["control_plane"] = wheelhouse_facts("cmdop-server")
        if inventory.groups["agents"]:
            wheels["agents"] = agent_releases.shipped().facts(switch=False)
    make_dir(out / "host_vars", 0o700)
    for name, vault in vaults.items():
        write_atomic(out / "host_vars" / f"{name}.yml", vault, 0o600)
    make_dir(out / "group_vars", 0o755)
    common = group_vars(site.config, wheels, (out / "templates").absolute())
    if offline is not None:
        common["cmdop_common_bundle"] = bundle_vars(offline, folder)
    common_text = MANAGED + json.dumps(common, indent=2) + "\n"
    write_atomic(out / "group_vars" / "all.yml", common_text.encode(), 0o644)
    shutil.rmtree(out / "templates", ignore_errors=True)
    shutil.copytree(render.templates_dir(), out / "templates")
    write_atomic(out / "inventory.yml", inventory_yaml(inventory).encode(), 0o644)
    return list(vaults)
