"""``cmdop-install check``: site.toml, inventory and rendered files against our policy.

Each finding is one line, ``<where>: <what> (<how to fix>)``. Lines starting with
``warning:`` do not fail the check (certificates due for renewal, odd but legal choices).
A malformed site.toml is not a finding but an error (exit 2), raised by ``load_site``.
Findings name secrets, never print them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from cmdop_install import pki
from cmdop_install.errors import UserError
from cmdop_install.inventory import GROUPS, INVENTORY_FILE, Inventory
from cmdop_install.render import MANAGED, RenderedFile
from cmdop_install.rotation_state import ROTATABLE
from cmdop_install.secrets import SPECS
from cmdop_install.site import Site
from cmdop_install.sitedir import SiteDir

REQUIRED_GROUPS = ("postgres", "redis", "control_plane")
# pyinfra host data that would run our operations as another user than root or the SSH user
UNSUPPORTED_ESCALATION = {"_sudo_user", "_su_user", "_doas", "_doas_user"}
_ALL_INTERFACES = ("*", "0.0.0.0", "::", "-::*", "")  # noqa: S104 - what we look for


def check_site(site: SiteDir) -> list[str]:
    config, inventory = site.config, site.inventory
    findings = check_inventory(config, inventory)
    if config.centrifugo_enabled and not Path(config["centrifugo"]["binary"]).is_file():
        findings.append(f"site.toml: centrifugo.binary: {config['centrifugo']['binary']} does "
                        "not exist (point it at a centrifugo v6 binary or set \"\")")
    missing = [row["name"] for row in site.store.listing() if row["source"] == "-"]
    if missing:
        findings.append(f"secrets.enc: missing {', '.join(missing)} (run `cmdop-install init`)")
        return findings
    findings += secret_age_findings(site)
    findings += pki.public_tls_expiry(config)
    findings += pki.certificate_findings(site.path, config, inventory)
    if any(f.startswith(("pki/", INVENTORY_FILE)) for f in findings):
        return findings  # rendering needs a consistent inventory and the site CA
    waiting = {spec.host for spec in pki.leaf_specs(config, inventory)
               if not pki.is_issued(site.path, spec.name)}
    for host in inventory.hosts():
        if host.name in waiting:
            findings.append(f"warning: {host.name}: its files are linted once its certificates "
                            "are issued (`cmdop-install render` or `deploy` issue them)")
            continue
        findings += [f"{host.name}:{line}" for line in lint_files(site.files(host.name),
                                                                  site.secrets)]
    return findings


def secret_age_findings(site: SiteDir) -> list[str]:
    """A warning for each rotatable secret older than ``[rotation] max_age_days``."""
    limit = site.config["rotation"]["max_age_days"]
    now = datetime.now(UTC)
    return [
        f"warning: secrets.enc: {name} is {(now - site.store.created(name)).days} days old "
        f"(over [rotation] max_age_days = {limit}): `cmdop-install rotate {site.path} {name}`"
        for name, why in ROTATABLE.items()
        if why is None and (now - site.store.created(name)).days > limit
    ]


def machine_credential_findings(site: SiteDir) -> list[str]:
    """``check`` on a deployed site: agents' machine credentials against ``[rotation]
    max_age_days``. They live with the control plane, so this reads its first host once (as
    `status` does); a site never deployed has none, and one not reached gets a warning."""
    from cmdop_install import agent_credentials
    from cmdop_install.status import last_deploy

    if not site.inventory.groups["control_plane"] or last_deploy(site.path) is None:
        return []
    try:
        machines = agent_credentials.read_machines(site)
    except UserError as exc:
        return [f"warning: agents: machine credential ages not read ({exc.message})"]
    return agent_credentials.age_findings(site, machines)


def refuse_on_problems(site: SiteDir, what: str) -> list[str]:
    """``check`` before anything is ``what`` ("deployed", "rendered"): any problem stops it,
    with the first one named. Returns the findings (warnings only, then).

    The leaf certificates the inventory needs are issued in between (as ``init`` does), once
    the inventory itself is sound: never for one that is refused."""
    findings = check_inventory(site.config, site.inventory)
    problems = [f for f in findings if not f.startswith("warning:")]
    if not problems:
        site.complete()
        findings = check_site(site)
        problems = [f for f in findings if not f.startswith("warning:")]
    if problems:
        raise UserError(
            f"`cmdop-install check {site.path}` found {len(problems)} problem(s), nothing was "
            f"{what}; first: {problems[0]}"
        )
    return findings


def check_inventory(site: Site, inventory: Inventory) -> list[str]:
    findings = []
    for group in REQUIRED_GROUPS:
        if not inventory.groups[group]:
            findings.append(f"{INVENTORY_FILE}: {group}: no host "
                            f"(add one, e.g. {group} = [_node1])")
    for name in inventory.other_groups:
        findings.append(f"warning: {INVENTORY_FILE}: {name}: not a group cmdop-install uses "
                        f"(ours: {', '.join(GROUPS)}; a typo?)")
    if len(inventory.groups["postgres"]) > 1:
        findings.append(f"{INVENTORY_FILE}: postgres: {len(inventory.groups['postgres'])} hosts "
                        "(one primary is supported; list replicas when replication lands)")
    cf_hosts = inventory.groups["centrifugo"]
    if site.centrifugo_enabled and not cf_hosts:
        findings.append(f"{INVENTORY_FILE}: centrifugo: no host but [centrifugo] binary is set "
                        "(add a host or set binary = \"\")")
    if cf_hosts and not site.centrifugo_enabled:
        findings.append(f"warning: {INVENTORY_FILE}: centrifugo: hosts listed but Centrifugo is "
                        "off (set [centrifugo] binary in site.toml)")
    cp_names = {h.name for h in inventory.groups["control_plane"]}
    for host in cf_hosts:
        if site.centrifugo_enabled and host.name not in cp_names:
            findings.append(f"{INVENTORY_FILE}: centrifugo: {host.name} is not a control_plane "
                            "host (its API listens on loopback: run it next to the app)")
    seen: dict[str, object] = {}
    for group, hosts in inventory.groups.items():
        for host in hosts:
            other = seen.setdefault(host.name, host)
            if other != host:
                findings.append(f"{INVENTORY_FILE}: {group}: {host.name} is defined twice with "
                                "different data (define it once and reuse the tuple)")
    by_address: dict[str, str] = {}
    for host in inventory.hosts():
        for address in {host.address, host.ssh_hostname}:
            owner = by_address.setdefault(address, host.name)
            if owner != host.name:
                findings.append(f"{INVENTORY_FILE}: {owner} and {host.name} share the address "
                                f"{address} (one host, one name: merge them)")
    for host in inventory.hosts():
        for key in sorted(UNSUPPORTED_ESCALATION & host.data.keys()):
            findings.append(f"{INVENTORY_FILE}: {host.name}: {key} is not supported (cmdop-install "
                            "runs as the SSH user and uses sudo where it needs root: remove it)")
    for host in inventory.groups["redis"]:
        if not host.address_is_ip:
            findings.append(f"{INVENTORY_FILE}: redis: {host.name}: address {host.address} is "
                            "not an IP (Redis binds to IPs: set \"address\")")
    for host in inventory.groups["control_plane"]:
        if not host.address_is_ip:
            findings.append(f"warning: {INVENTORY_FILE}: control_plane: {host.name}: address "
                            f"{host.address} is a name; pg_hba will resolve it on every login")
    return findings


# --- policy lint of rendered files -----------------------------------------------------

_NO_HEADER = (".crt", ".key", ".json", ".acl")  # formats without comments, or raw values


def lint_files(files: list[RenderedFile], secrets: dict[str, str]) -> list[str]:
    """Findings (``<path>: <what> (<fix>)``) for a host's rendered files."""
    findings = []
    values = {name: v for name, v in secrets.items() if name in SPECS and v}
    for f in files:
        text = f.content.decode(errors="replace")
        is_credential = "/credentials/" in f.path
        if not (f.path.endswith(_NO_HEADER) or is_credential) and MANAGED not in (
                text.splitlines() or [""])[0]:
            findings.append(f"{f.path}: first line must say '{MANAGED}' (fix the template)")
        readable_by_all = bool(f.mode & 0o004)
        if readable_by_all:
            leaked = [n for n, v in values.items() if v in text]
            if leaked or f.secret or "PRIVATE KEY" in text:
                what = ", ".join(leaked) if leaked else "a private key or secret"
                findings.append(f"{f.path}: mode {f.mode:04o} is world-readable but holds "
                                f"{what} (make it 0600/0640)")
        if f.mode & 0o002:
            findings.append(f"{f.path}: mode {f.mode:04o} is world-writable (make it 0644)")
        for rule in _RULES:
            if re.search(rule.pattern, f.path):
                findings += [f"{f.path}: {msg}" for msg in rule.lint(text)]
    return findings


def _directives(text: str, sep: str = r"\s+") -> list[tuple[str, str]]:
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            parts = re.split(sep, line, maxsplit=1)
            out.append((parts[0].strip().lower(), parts[1].strip() if len(parts) > 1 else ""))
    return out


def lint_pg_hba(text: str) -> list[str]:
    found = []
    nossl_rejects = set()
    for raw in text.splitlines():
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        kind, method = fields[0], fields[-1]
        if kind not in ("local", "hostssl", "hostnossl"):
            found.append(f"line type {kind!r} (use hostssl; plain host allows no-TLS logins)")
        if method in ("trust", "md5", "password", "ident"):
            found.append(f"method {method!r} (use scram-sha-256, peer for local postgres)")
        if kind == "hostnossl":
            if method != "reject":
                found.append("a hostnossl line that is not reject (non-TLS must be refused)")
            else:
                nossl_rejects.add(fields[3] if len(fields) > 3 else "")
        if kind == "hostssl" and method not in ("scram-sha-256", "reject", "cert"):
            found.append(f"hostssl method {method!r} (use scram-sha-256)")
    for net in ("0.0.0.0/0", "::/0"):
        if net not in nossl_rejects:
            found.append(f"no 'hostnossl all all {net} reject' (non-TLS must be refused)")
    return found


def lint_pg_conf(text: str) -> list[str]:
    conf = {k: v.strip("'\" ") for k, v in _directives(text, r"\s*=\s*")}
    found = []
    if conf.get("ssl") != "on":
        found.append("ssl is not on (set ssl = on)")
    if conf.get("ssl_min_protocol_version") != "TLSv1.3":
        found.append("ssl_min_protocol_version is not TLSv1.3")
    if conf.get("password_encryption") != "scram-sha-256":
        found.append("password_encryption is not scram-sha-256")
    if conf.get("listen_addresses", "") in _ALL_INTERFACES:
        found.append("listen_addresses is every interface (use the inventory address)")
    return found


def lint_redis_conf(text: str) -> list[str]:
    conf: dict[str, str] = {}
    for key, value in _directives(text):
        conf[key] = value
    found = []
    if conf.get("port") != "0":
        found.append("port is not 0 (the plaintext port must be off)")
    if "tls-port" not in conf:
        found.append("no tls-port")
    if conf.get("tls-protocols", "").strip('"') != "TLSv1.3":
        found.append('tls-protocols is not "TLSv1.3"')
    if conf.get("tls-auth-clients", "yes") == "no":
        found.append("tls-auth-clients is no (clients must present our certificate)")
    if conf.get("protected-mode") != "yes":
        found.append("protected-mode is not yes")
    if "aclfile" not in conf:
        found.append("no aclfile (users and passwords must come from the ACL file)")
    if "requirepass" in conf:
        found.append("requirepass set (use the ACL file only)")
    if any(b in _ALL_INTERFACES for b in conf.get("bind", "*").split()):
        found.append("bind is every interface (use the inventory address)")
    return found


def lint_users_acl(text: str) -> list[str]:
    found = []
    default_off = False
    for raw in text.splitlines():
        words = raw.split()
        if not words:
            continue
        if words[0] != "user" or len(words) < 2:
            found.append(f"line {raw[:20]!r}... is not a 'user' rule")
            continue
        name, rules = words[1], words[2:]
        if name == "default":
            default_off = "off" in rules and "on" not in rules
            continue
        if "nopass" in rules:
            found.append(f"user {name} has nopass")
        if any(r.startswith(">") for r in rules):
            found.append(f"user {name} has a plaintext password (use #<sha256>)")
        if "allkeys" in rules or "~*" in rules or "allcommands" in rules:
            found.append(f"user {name} may touch every key or command (narrow it)")
        if "+@all" in rules and not {"-@dangerous", "-@admin"} <= set(rules):
            found.append(f"user {name} has +@all without -@admin -@dangerous")
        if "+@dangerous" in rules or "+@admin" in rules:
            found.append(f"user {name} is granted @dangerous/@admin")
    if not default_off:
        found.append("the default user is not off (add 'user default off')")
    return found


def lint_nginx(text: str) -> list[str]:
    found = []
    protocols = {v for k, v in _directives(text) if k == "ssl_protocols"}
    if protocols != {"TLSv1.3;"}:
        found.append("ssl_protocols is not TLSv1.3 only")
    # the app sends HSTS and the other browser headers; a second copy from nginx conflicts
    added = {v.split()[0].lower() for k, v in _directives(text) if k == "add_header" and v}
    for header in ("Strict-Transport-Security", "X-Content-Type-Options",
                   "Content-Security-Policy"):
        if header.lower() in added:
            found.append(f"add_header {header}: the app sends it (it would go out twice)")
    return found


def lint_unit(text: str) -> list[str]:
    wanted = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}
    have = dict(_directives(text, r"\s*=\s*"))
    return [f"{k}={v} missing (sandbox)" for k, v in wanted.items() if have.get(k.lower()) != v]


def lint_centrifugo(text: str) -> list[str]:
    try:
        conf = json.loads(text)
    except json.JSONDecodeError as exc:
        return [f"not valid JSON (line {exc.lineno})"]
    found = []
    if conf.get("admin", {}).get("enabled", False):
        found.append("admin.enabled is true (the admin UI must be off)")
    if conf.get("http_api", {}).get("insecure") or conf.get("client", {}).get("insecure"):
        found.append("an insecure mode is on")
    if "*" in conf.get("client", {}).get("allowed_origins", ["*"]):
        found.append("allowed_origins is empty or '*' (list the public URL)")
    if conf.get("http_server", {}).get("internal_address") not in ("127.0.0.1", "::1"):
        found.append("internal_address is not loopback (the API must stay local)")
    for ns in conf.get("channel", {}).get("namespaces", []):
        for flag in ("allow_publish_for_client", "allow_publish_for_subscriber",
                     "allow_subscribe_for_client", "allow_publish_for_anonymous"):
            if ns.get(flag):
                found.append(f"namespace {ns.get('name')}: {flag} is true (clients never "
                             "publish; subscribing needs a subscription token)")
    return found


class _Rule:
    def __init__(self, pattern: str, lint) -> None:
        self.pattern, self.lint = pattern, lint


_RULES = [
    _Rule(r"/pg_hba\.conf$", lint_pg_hba),
    _Rule(r"/postgresql/.*/conf\.d/.*\.conf$", lint_pg_conf),
    _Rule(r"/redis/redis\.conf$", lint_redis_conf),
    _Rule(r"/users\.acl$", lint_users_acl),
    _Rule(r"/nginx/.*\.conf$", lint_nginx),
    _Rule(r"/systemd/system/[^/]+\.service$", lint_unit),
    _Rule(r"/centrifugo/config\.json$", lint_centrifugo),
]
