"""Build a real site folder for tests with ``cmdop_install``'s own init.

``make_site(tmp_path, key=KEY, postgres_port=..., ...)`` writes site.toml (from the schema,
with the overrides given) and an inventory of one loopback host ``node1`` in every group
asked for, then runs ``init_site`` with ``CMDOP_INSTALL_KEY`` set to ``key``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from cmdop_install.deploys.redis import acl_load_command, tls_reload_command
from cmdop_install.render import Paths, load_for_render, render_host
from cmdop_install.rotation import Rotation, resolve
from cmdop_install.site import default_site, render_site_toml
from cmdop_install.sitedir import SiteDir
from cmdop_install.siteinit import init_site

TEST_KEY = base64.b64encode(bytes(range(32))).decode()


@contextmanager
def key_env(key: str = TEST_KEY):
    """CMDOP_INSTALL_KEY set for the duration (module-scoped fixtures cannot monkeypatch)."""
    old = os.environ.get("CMDOP_INSTALL_KEY")
    os.environ["CMDOP_INSTALL_KEY"] = key
    try:
        yield key
    finally:
        if old is None:
            os.environ.pop("CMDOP_INSTALL_KEY", None)
        else:
            os.environ["CMDOP_INSTALL_KEY"] = old


def write_site(site_dir: Path, overrides: dict | None = None, agents: bool = False,
               centrifugo: bool = False, address: str = "127.0.0.1") -> None:
    site_dir.mkdir(parents=True, exist_ok=True)
    values = default_site("testsite")
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        values[section][key] = value
    (site_dir / "site.toml").write_text(render_site_toml(values))
    node = f'("node1", {{"ssh_hostname": "{address}", "dns_names": ["node1.internal"]}})'
    agent = '("agent1", {"ssh_hostname": "127.0.0.2"})'
    (site_dir / "inventory.py").write_text(
        f"_node1 = {node}\n"
        "postgres = [_node1]\nredis = [_node1]\ncontrol_plane = [_node1]\n"
        f"centrifugo = {'[_node1]' if centrifugo else '[]'}\n"
        f"agents = {'[' + agent + ']' if agents else '[]'}\n"
    )


def make_site(site_dir: Path, overrides: dict | None = None, **kwargs) -> Path:
    """A complete site (secrets + PKI) in ``site_dir``; CMDOP_INSTALL_KEY must be set."""
    write_site(site_dir, overrides, **kwargs)
    init_site(site_dir)
    return site_dir


def plain_key(site_dir: Path, name: str) -> Path:
    """pki/<name>.key decrypted into a 0600 file next to it (for test clients' TLS)."""
    from cmdop_install import pki
    from cmdop_install.secrets import SecretStore

    store = SecretStore.open(site_dir, "")
    path = Path(site_dir) / f"plain-{name}.key"
    path.write_bytes(pki.private_key_pem(site_dir, f"{name}.key", store.pki_passphrase()))
    path.chmod(0o600)
    return path


def rotation_step(site_dir: Path, action: str, names: tuple[str, ...]) -> list[str]:
    """One `rotate` step on a site folder, as the CLI runs it: start or resume a rotation of
    ``names`` (action "rotate"), or "finish"/"rollback"; the lines it printed."""
    lines: list[str] = []
    r = Rotation(SiteDir.load(site_dir), lines.append)
    if action == "rotate":
        r.start_or_resume(resolve(tuple(names), False))
    else:
        getattr(r, action)()
    return lines


REDIS_ROLE_SERVICE = Path(__file__).resolve().parents[2] / "roles/cmdop_redis/tasks/service.yml"


def redis_role_tasks(server, start_at: str) -> int:
    """The cmdop_redis role's service tasks from the one named ``start_at`` on (the service
    start before them needs systemd), run by ansible-playbook on this machine against a
    scratch ``RedisServer`` serving the site's files (``serve_site_redis``), with
    export-ansible's commands for its root; the number of tasks that changed."""
    paths = Paths(root=str(server.dir))
    tls = f"{server.dir}/etc/redis/tls"
    play = server.dir / "role-play.yml"
    play.write_text(json.dumps([{
        "name": "Redis", "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"cmdop_redis_etc": f"{server.dir}/etc/redis",
                 "cmdop_redis_tls_files": [f"{tls}/redis.crt", f"{tls}/redis.key",
                                           f"{tls}/ca.crt"],
                 "cmdop_redis_acl_load": acl_load_command(paths),
                 "cmdop_redis_tls_reload": tls_reload_command(paths)},
        "tasks": [{"ansible.builtin.import_tasks": str(REDIS_ROLE_SERVICE)}],
    }]))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), str(play),
         "--start-at-task", start_at],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_NOCOLOR": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    recap = re.search(r"localhost\s*:.*changed=(\d+)", done.stdout)
    assert recap, done.stdout[-2000:]
    return int(recap.group(1))


def serve_site_redis(site_dir: Path, server) -> None:
    """Give a scratch ``RedisServer`` (tests/support/services.py) the site's own rendered
    /etc/redis files for node1, its redis.conf and the OpenSSL config its TLS needs."""
    site, inventory, secrets, pem = load_for_render(site_dir)
    files = render_host(site, inventory, "node1", secrets, pem, root=str(server.dir))
    server.files = {f.path.lstrip("/"): (f.content, f.mode) for f in files
                    if f.path.startswith("/etc/redis/")}
    server.conf = next(f for f in files if f.path == "/etc/redis/redis.conf").content.decode()
    server.env = {"OPENSSL_CONF": f"{server.dir}/etc/redis/openssl-cmdop.cnf"}
