"""Render every file a host receives, from templates/ (plain Jinja2, StrictUndefined).

``render_host`` returns ``RenderedFile``s: the host path, bytes, mode, owner and group. The
same function feeds ``cmdop-install render`` (files + manifest), the policy lint in
``check`` and the deploys. ``root`` prefixes every absolute path the files refer to, so
tests can run the real daemons on these files from a scratch folder.

Secret values enter only files whose mode is 0600/0640 (lint enforces it); the manifest
lists path, mode, owner, group and sha256, never content.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2

from cmdop_install import pki, rotation_state
from cmdop_install.errors import UserError
from cmdop_install.hashing import redis_acl_hash
from cmdop_install.inventory import Host, Inventory, load_inventory
from cmdop_install.manage import CREDENTIALS
from cmdop_install.secrets import SecretStore
from cmdop_install.site import Site, load_site

MANAGED = "managed by cmdop-install, do not edit"
# nginx connections per worker: 5,000 agents take 10,000 (client + upstream), plus the
# people, with room to spare even when one worker gets them all (templates/nginx/nginx.conf)
NGINX_WORKER_CONNECTIONS = 16384



def templates_dir() -> Path:
    """The repo's templates/ in a checkout; the copy shipped inside the wheel otherwise."""
    override = os.environ.get("CMDOP_INSTALL_TEMPLATES")
    candidates = [Path(override)] if override else []
    candidates += [Path(__file__).resolve().parents[3] / "templates",
                   Path(__file__).resolve().parent / "templates"]
    for candidate in candidates:
        if (candidate / "postgres" / "pg_hba.conf.j2").is_file():
            return candidate
    raise UserError("templates not found (broken install: reinstall cmdop-install)")


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - config files, not HTML
    )


@dataclass(frozen=True)
class Paths:
    """Where things live on a host; ``root`` prefixes all of them (tests, chroots)."""

    root: str = ""
    pg_major: int = 15

    def __getattr__(self, name: str) -> str:
        table = {
            "pg_conf": f"/etc/postgresql/{self.pg_major}/main",
            "pg_tls": "/etc/postgresql/tls",
            "redis": "/etc/redis",
            "redis_tls": "/etc/redis/tls",
            # the installer's ACL LOAD only: a unix socket no one but root (and redis) opens
            "redis_acl_socket": "/run/redis/cmdop-acl.sock",
            "redis_dropin": "/etc/systemd/system/redis-server.service.d",
            "pg_dropin": f"/etc/systemd/system/postgresql@{self.pg_major}-main.service.d",
            "nginx_dropin": "/etc/systemd/system/nginx.service.d",
            "centrifugo_etc": "/etc/centrifugo",
            "centrifugo_tls": "/etc/centrifugo/tls",
            "centrifugo_bin": "/usr/local/bin/centrifugo",
            "nginx_conf": "/etc/nginx/conf.d",
            "nginx_etc": "/etc/nginx",
            "nginx_log": "/var/log/nginx",
            "nginx_var": "/var/lib/nginx",
            "nginx_pid": "/run/nginx.pid",
            "nginx_tls": "/etc/nginx/tls",
            "cmdop_etc": "/etc/cmdop",
            "cmdop_secrets": "/etc/cmdop/credentials",
            "cmdop_admin": "/etc/cmdop/admin",
            "cmdop_tls": "/etc/cmdop/tls",
            "gunicorn_socket": "/run/cmdop/gunicorn.sock",
            # the workers' shared metrics, in the service's RuntimeDirectory like the socket
            "metrics_dir": "/run/cmdop/metrics",
            # the release `current` links to (manage.SERVER_VENV): a deploy switches the link
            "server_venv": "/opt/cmdop/server/current/venv",
            "agent_etc": "/etc/cmdop-agent",
            "agent_bin": "/opt/cmdop-agent/current/venv/bin/cmdop-agent",
            "agent_state": "/var/lib/cmdop-agent",
            "systemd": "/etc/systemd/system",
            "firewall_etc": "/etc/cmdop-firewall",
            "backup_etc": "/etc/cmdop-backup",
        }
        if name not in table:
            raise AttributeError(name)
        return self.root + table[name]


@dataclass(frozen=True)
class RenderedFile:
    path: str  # absolute path on the host (without root)
    content: bytes
    mode: int
    owner: str = "root"
    group: str = "root"
    secret: bool = False  # holds a secret value (or a private key)
    # the templates/ file it comes from ("" for PEM and credential files) and the variables
    # set on top of the host's context for it: the Ansible roles render it from these
    template: str = ""
    template_vars: tuple[tuple[str, bool], ...] = ()

    def manifest_entry(self) -> dict:
        return {"path": self.path, "mode": f"{self.mode:04o}", "owner": self.owner,
                "group": self.group, "sha256": hashlib.sha256(self.content).hexdigest()}


def _cidr(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a host name: pg_hba resolves it (check warns)
    return f"{ip}/{ip.max_prefixlen}"


def firewall(site: Site, inventory: Inventory, host: Host) -> dict:
    """Who may reach this host's Postgres and Redis ports: the control-plane hosts (and
    Centrifugo's, for Redis) plus ``[firewall] admin_sources``."""
    roles = inventory.roles_of(host.name)
    ports = []
    if "postgres" in roles:
        ports.append(site["postgres"]["port"])
    if "redis" in roles:
        ports.append(site["redis"]["port"])
    clients = [h.address for h in inventory.groups["control_plane"]]
    if "redis" in roles and site.centrifugo_enabled:
        clients += [h.address for h in inventory.groups["centrifugo"]]
    clients += admin_sources(site)
    four: set[str] = set()
    six: set[str] = set()
    for address in clients:
        try:
            net = ipaddress.ip_network(address, strict=False)
        except ValueError:
            four.add(address)  # a host name: nft resolves it when the table loads
            continue
        (four if net.version == 4 else six).add(str(net))
    return {"ports": sorted(ports), "sources4": sorted(four), "sources6": sorted(six)}


def admin_sources(site: Site) -> list[str]:
    return [a.strip() for a in site["firewall"]["admin_sources"].split(",") if a.strip()]


def metrics_sources(site: Site) -> list[str]:
    """The networks /metrics answers, normalised (10.0.0.5 -> 10.0.0.5/32) for nginx."""
    return [str(ipaddress.ip_network(a.strip(), strict=False))
            for a in site["metrics"]["allowed_sources"].split(",") if a.strip()]


def postgres_names(site: Site) -> dict:
    """The Postgres roles and databases of a site (the templates and the deploy share them)."""
    prefix = site["postgres"]["role_prefix"]
    pg: dict[str, str | list[str]] = {
        "owner": f"{prefix}_owner", "blue": f"{prefix}_blue", "green": f"{prefix}_green"
    }
    pg["active"] = pg[site["postgres"]["active_role"]]
    # blue/green are members of this one: rows in the app's tables, never their schema
    pg["app"] = f"{prefix}_app"
    pg["admin"] = f"{prefix}_admin"  # logs in for the app database's migrations only
    # the audit log belongs to a role the app can never become: the app may only add rows
    pg["audit_owner"] = f"{prefix}_audit_owner"
    pg["audit_admin"] = f"{prefix}_audit_admin"  # logs in for audit migrations only
    database = site["postgres"]["database"]
    audit_database = f"{database}_audit"  # cmdop_server's "audit" alias
    pg["audit_database"] = audit_database
    pg["databases"] = [database, audit_database]
    return pg


def backup_passfile(site: Site, host: Host, secrets: dict[str, str]) -> bytes:
    """cmdop-backup's libpq passfile: each database's admin login at this host's address."""
    pg = postgres_names(site)

    def field(value: str) -> str:  # libpq reads an escaped : or backslash as itself
        return value.replace("\\", "\\\\").replace(":", "\\:")

    lines = [
        ":".join(field(str(v)) for v in (host.address, site["postgres"]["port"], db, role,
                                          secrets[secret]))
        for db, role, secret in ((pg["databases"][0], pg["admin"], "postgres_password_admin"),
                                 (pg["audit_database"], pg["audit_admin"],
                                  "postgres_password_audit_admin"))
    ]
    return (f"# {MANAGED} (site {site['site']['name']}, host {host.name})\n"
            + "\n".join(lines) + "\n").encode()


def _context(site: Site, inventory: Inventory, host: Host, secrets: dict[str, str],
             paths: Paths) -> dict:
    pg = postgres_names(site)
    centrifugo_hosts = inventory.groups["centrifugo"] if site.centrifugo_enabled else []
    redis_hosts = inventory.groups["redis"]
    centrifugo_redis = None
    if len(centrifugo_hosts) > 1 and redis_hosts:
        centrifugo_redis = {"addresses": [
            f"rediss://{h.address}:{site['redis']['port']}/0" for h in redis_hosts[:1]]}
    name = site["site"]["name"]
    return {
        "site": site,
        "host": host,
        "paths": paths,
        "secrets": secrets,
        "pg": pg,
        "pg_host": inventory.groups["postgres"][0] if inventory.groups["postgres"] else host,
        "redis_host": redis_hosts[0] if redis_hosts else host,
        "app_sources": sorted({_cidr(h.address) for h in inventory.groups["control_plane"]}),
        # cmdop-backup logs in as the admins from the database host itself (unless it is a
        # control-plane host, whose lines already let them in)
        "backup_sources": sorted({_cidr(h.address) for h in inventory.groups["postgres"]}
                                 - {_cidr(h.address) for h in inventory.groups["control_plane"]}),
        "public_origin": site["site"]["public_url"].rstrip("/"),
        "site_centrifugo_on": site.centrifugo_enabled,
        # agents trust the system CAs when nginx has a public certificate, else only ours
        "site_public_tls": site.public_tls,
        "agent_ca_file": "system" if site.public_tls else f"{paths.agent_etc}/ca.crt",
        "centrifugo_redis": centrifugo_redis,
        "centrifugo_namespaces": [
            {"name": "session", "presence": True, "history_size": 1000},
            {"name": "workspace", "presence": False, "history_size": 100},
        ],
        "credential_names": list(CREDENTIALS),
        "roles": inventory.roles_of(host.name),
        "firewall": firewall(site, inventory, host),
        "metrics_sources": metrics_sources(site),
        "nginx_worker_connections": NGINX_WORKER_CONNECTIONS,
        "redis": {
            "app_user": f"{name}-app",
            "app_prefix": f"{name}:",
            "app_hashes": _acl_hashes(secrets, "redis_password_app"),
            "centrifugo_user": f"{name}-centrifugo",
            "centrifugo_hashes": _acl_hashes(secrets, "redis_password_centrifugo"),
            "acl_user": f"{name}-acl-load",
            "acl_hashes": _acl_hashes(secrets, "redis_password_admin"),
        },
    }


def _acl_hashes(secrets: dict[str, str], name: str) -> list[str]:
    """The SHA-256 of every password Redis user ``name`` accepts: the current one, and
    while it rotates the one it replaced or the staged one (``SecretStore.values``). Sorted,
    so users.acl reads the same before and after the clients switch."""
    return sorted({redis_acl_hash(secrets[key])
                   for key in (name, f"{name}:previous", f"{name}:next") if key in secrets})


def template_context(site: Site, inventory: Inventory, host_name: str,
                     secrets: dict[str, str]) -> dict:
    """The variables every template of ``host_name`` sees (the Ansible export ships them)."""
    return _context(site, inventory, inventory.host(host_name), secrets,
                    Paths(pg_major=site["postgres"]["major"]))


def render_host(site: Site, inventory: Inventory, host_name: str, secrets: dict[str, str],
                pem: dict[str, bytes], root: str = "") -> list[RenderedFile]:
    """Every file ``host_name`` receives. ``pem`` maps pki file names to PEM bytes."""
    host = inventory.host(host_name)
    roles = inventory.roles_of(host_name)
    paths = Paths(root=root, pg_major=site["postgres"]["major"])
    host_paths = Paths(pg_major=site["postgres"]["major"])
    ctx = _context(site, inventory, host, secrets, paths)
    env = environment()
    files: list[RenderedFile] = []

    def add(template: str, dest: str, mode: int, owner: str = "root", group: str = "root",
            secret: bool = False) -> None:
        try:
            text = env.get_template(template).render(ctx)
        except jinja2.TemplateError as exc:
            raise UserError(f"template {template}: {type(exc).__name__}: {exc.message}") from None
        files.append(RenderedFile(dest, text.encode(), mode, owner, group, secret, template,
                                  (("audit_admin", bool(ctx.get("audit_admin"))),)))

    def tls(dest_dir: str, cert: str, as_name: str, owner: str, group: str,
            key_mode: int = 0o600) -> None:
        files.append(RenderedFile(f"{dest_dir}/{as_name}.crt", pem[f"{cert}.crt"], 0o644))
        files.append(RenderedFile(f"{dest_dir}/{as_name}.key", pem[f"{cert}.key"], key_mode,
                                  owner, group, secret=True))

    def ca(dest_dir: str) -> None:
        files.append(RenderedFile(f"{dest_dir}/ca.crt", pem["ca.crt"], 0o644))

    if "postgres" in roles:
        add("postgres/60-cmdop.conf.j2", f"{host_paths.pg_conf}/conf.d/60-cmdop.conf", 0o644)
        add("postgres/pg_hba.conf.j2", f"{host_paths.pg_conf}/pg_hba.conf", 0o640,
            "postgres", "postgres")
        add("postgres/roles.sql.j2", f"{host_paths.pg_conf}/cmdop-roles.sql", 0o640,
            "postgres", "postgres")
        tls(host_paths.pg_tls, f"postgres-{host.name}", "server", "postgres", "postgres")
        add("postgres/postgresql.service.hardening.conf.j2",
            f"{host_paths.pg_dropin}/cmdop-hardening.conf", 0o644)
        ca(host_paths.pg_tls)
        add("postgres/cmdop-backup.sh.j2", f"{host_paths.backup_etc}/cmdop-backup", 0o600)
        add("postgres/cmdop-restore.sh.j2", f"{host_paths.backup_etc}/cmdop-restore", 0o600)
        files.append(RenderedFile(f"{host_paths.backup_etc}/pgpass",
                                  backup_passfile(site, host, secrets), 0o600, secret=True))
        if site["backup"]["schedule"]:
            for unit in ("cmdop-backup.service", "cmdop-backup.timer"):
                add(f"systemd/{unit}.j2", f"{host_paths.systemd}/{unit}", 0o644)
    if {"postgres", "redis"} & set(roles):
        add("firewall/cmdop.nft.j2", f"{host_paths.firewall_etc}/cmdop.nft", 0o600)
        add("systemd/cmdop-firewall.service.j2", f"{host_paths.systemd}/cmdop-firewall.service",
            0o644)
    if "redis" in roles:
        add("redis/redis.conf.j2", f"{host_paths.redis}/redis.conf", 0o640, "redis", "redis")
        add("redis/users.acl.j2", f"{host_paths.redis}/users.acl", 0o600, "redis", "redis",
            secret=True)
        add("redis/acl-load.auth.j2", f"{host_paths.redis}/cmdop-acl-load.auth", 0o400,
            secret=True)
        add("redis/openssl.cnf.j2", f"{host_paths.redis}/openssl-cmdop.cnf", 0o644)
        add("redis/redis-server.override.conf.j2", f"{host_paths.redis_dropin}/cmdop.conf",
            0o644)
        tls(host_paths.redis_tls, f"redis-{host.name}", "redis", "redis", "redis")
        ca(host_paths.redis_tls)
    if "control_plane" in roles:
        add("nginx/nginx.conf.j2", f"{host_paths.nginx_etc}/nginx.conf", 0o644)
        add("nginx/cmdop.conf.j2", f"{host_paths.nginx_conf}/cmdop.conf", 0o644)
        add("nginx/nginx.service.hardening.conf.j2",
            f"{host_paths.nginx_dropin}/cmdop-hardening.conf", 0o644)
        public = pki.public_tls(site)
        if public:
            files.append(RenderedFile(f"{host_paths.nginx_tls}/cmdop.crt", public[0], 0o644))
            files.append(RenderedFile(f"{host_paths.nginx_tls}/cmdop.key", public[1], 0o600,
                                      secret=True))
        else:
            tls(host_paths.nginx_tls, f"nginx-{host.name}", "cmdop", "root", "root")
        ca(host_paths.nginx_tls)
        add("control_plane/gunicorn.conf.py.j2", f"{host_paths.cmdop_etc}/gunicorn.conf.py",
            0o644)
        add("control_plane/server.toml.j2", f"{host_paths.cmdop_etc}/server.toml", 0o644)
        # the same settings, but each database as its owner's admin login: only the
        # installer's migrate runs with it (its credentials are never loaded by the service)
        ctx["audit_admin"] = True
        add("control_plane/server.toml.j2", f"{host_paths.cmdop_admin}/server.toml", 0o644)
        ctx["audit_admin"] = False
        for cred, admin_secret in (("db_password", "postgres_password_admin"),
                                   ("audit_db_password", "postgres_password_audit_admin")):
            files.append(RenderedFile(f"{host_paths.cmdop_admin}/credentials/{cred}",
                                      (secrets[admin_secret] + "\n").encode(), 0o600,
                                      secret=True))
        tls(host_paths.cmdop_tls, f"app-{host.name}", "app", "root", "cmdop", 0o640)
        ca(host_paths.cmdop_tls)
        for cred, secret_name in CREDENTIALS.items():
            if cred == "db_password":
                value = secrets[f"postgres_password_{site['postgres']['active_role']}"]
            elif cred == "secret_key_fallbacks":
                # the key a rotation replaced still verifies until `rotate --finish`
                value = secrets.get("django_secret_key:previous", "")
            else:
                value = secrets[str(secret_name)]
            # the service reads them in place on every reload (cmdop-server.service says
            # why); its management commands get them through LoadCredential= (root reads)
            files.append(RenderedFile(f"{host_paths.cmdop_secrets}/{cred}",
                                      (value + "\n").encode() if value else b"", 0o400,
                                      "cmdop", "root", secret=True))
        for unit in ("cmdop-server.socket", "cmdop-server.service",
                     "cmdop-audit-retention.service", "cmdop-audit-retention.timer",
                     "cmdop-sessions-sweep.service", "cmdop-sessions-sweep.timer"):
            add(f"systemd/{unit}.j2", f"{host_paths.systemd}/{unit}", 0o644)
    if "centrifugo" in roles and site.centrifugo_enabled:
        add("centrifugo/config.json.j2", f"{host_paths.centrifugo_etc}/config.json", 0o640,
            "root", "centrifugo", secret=True)
        tls(host_paths.centrifugo_tls, f"centrifugo-{host.name}", "centrifugo", "root",
            "centrifugo", 0o640)
        ca(host_paths.centrifugo_tls)
        add("systemd/centrifugo.service.j2", f"{host_paths.systemd}/centrifugo.service", 0o644)
    if "agents" in roles:
        agent_user = site["agent"]["user"]
        # the agent refuses a config that is not its user's own and private
        add("agent/agent.toml.j2", f"{host_paths.agent_etc}/agent.toml", 0o600, agent_user,
            agent_user)
        if not site.public_tls:
            ca(host_paths.agent_etc)
        add("systemd/cmdop-agent.service.j2", f"{host_paths.systemd}/cmdop-agent.service",
            0o644)
    return files


class PemFiles(dict):
    """PEM bytes of pki/ by file name, read on first use (render picks what it needs).

    Private keys come out decrypted: that is the form the daemons read on the hosts.
    "ca.crt" is the trust bundle (``pki.trust_bundle``): during a CA rotation both CAs,
    the staged one once ``with_next`` (admitted)."""

    def __init__(self, site_dir: Path, passphrase: bytes, with_next: bool = False) -> None:
        super().__init__()
        self.site_dir = Path(site_dir)
        self.passphrase = passphrase
        self.with_next = with_next
        if not (self.site_dir / pki.PKI_DIR).is_dir():
            raise UserError(f"{self.site_dir / pki.PKI_DIR}: missing "
                            f"(run `cmdop-install init {site_dir}`)")

    def __missing__(self, name: str) -> bytes:
        if name == "ca.crt":
            value = pki.trust_bundle(self.site_dir, self.with_next)
        elif name.endswith(".key"):
            value = pki.private_key_pem(self.site_dir, name, self.passphrase)
        else:
            value = pki.read_pem(self.site_dir, name)
        self[name] = value
        return value


def load_for_render(site_dir: Path):
    """(site, inventory, secrets, pem) of a site folder, each with its one-line errors."""
    site = load_site(site_dir)
    inventory = load_inventory(site_dir)
    store = SecretStore.open(site_dir, site["site"]["key_file"])
    values = store.values(rotation_state.admitted(site_dir))
    return site, inventory, values, PemFiles(site_dir, store.pki_passphrase(),
                                             rotation_state.ca_admitted(site_dir))
