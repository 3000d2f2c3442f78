"""site.toml: the operator's decisions, their schema and defaults, and line-exact errors.

The schema below is the single description of every key: ``init`` writes it out as a
commented site.toml, ``load_site`` checks a file against it, and the rest of the installer
reads the resulting ``Site`` mapping (defaults filled in). Secrets never live here.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmdop_install.errors import UserError

SITE_FILE = "site.toml"
EXIT_MALFORMED = 2

_DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_SIZE = re.compile(r"^[1-9][0-9]*(kb|mb|gb|KB|MB|GB|k|m|g)$")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
_PG_ROLE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


@dataclass(frozen=True)
class Key:
    """One site.toml key: its type, default, documentation and an optional value check."""

    type: type | tuple[type, ...]
    default: Any
    doc: str
    check: Any = None  # callable(value) -> error text or None
    example: Any = None  # written into the generated file instead of the default, if set


def _range(lo: int, hi: int):
    return lambda v: None if lo <= v <= hi else f"must be between {lo} and {hi}"


def _choice(*options: str):
    return lambda v: None if v in options else "must be one of " + ", ".join(options)


def _match(pattern: re.Pattern, what: str):
    return lambda v: None if pattern.match(v) else f"must be {what}"


def _https_url(v: str) -> str | None:
    return None if re.match(r"^https://[a-z0-9.-]+(:[0-9]{1,5})?/?$", v) else (
        "must be an https:// URL with no path, e.g. \"https://cmdop.example.com\""
    )


# Accounts that own our services' keys and data: an agent session must never be one of them.
SERVICE_ACCOUNTS = ("root", "cmdop", "postgres", "redis", "centrifugo", "www-data", "nobody")


def _agent_user(v: str) -> str | None:
    if not _NAME.match(v):
        return "must be a user name (lower-case letters, digits, '-' or '_')"
    if v in SERVICE_ACCOUNTS:
        return "must not be root or a service account (its keys would be readable)"
    return None


def _sources(v: str) -> str | None:
    for item in (a.strip() for a in v.split(",")):
        if not item:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an address or network like 10.0.0.5 or 10.0.0.0/24"
    return None


def _abs_or_empty(v: str) -> str | None:
    return None if v == "" or v.startswith("/") else "must be an absolute path or \"\""


def _backup_dir(v: str) -> str | None:
    if not re.fullmatch(r"/[A-Za-z0-9._/-]*[A-Za-z0-9._-]", v) or "/." in v:
        return "must be an absolute path of its own, e.g. \"/var/backups/cmdop\""
    return None


def _calendar(v: str) -> str | None:
    """A systemd OnCalendar= value (systemd.time(7)), or "" for no timer; the characters
    are checked here, the expression by systemd when the timer loads."""
    if v == "" or re.fullmatch(r"[A-Za-z0-9*:,./~ -]{1,64}", v):
        return None
    return "must be a systemd calendar expression such as \"daily\" or \"*-*-* 03:15\""


SCHEMA: dict[str, dict[str, Key]] = {
    "site": {
        "name": Key(str, "cmdop", "Short name of this site: certificate names, Redis key prefix.",
                    _match(_NAME, "lower-case letters, digits, '-' or '_'")),
        "domain": Key(str, "cmdop.example.com",
                      "Public DNS name of the control plane (nginx server_name, TLS SAN).",
                      _match(_DNS_NAME, "a lower-case DNS name like cmdop.example.com")),
        "owner_email": Key(str, "", "The first Owner's login, made by the first deploy "
                           "(default: admin@<domain>); password: `secrets show owner_password`.",
                           lambda v: None if v == "" or re.match(r"^[^@\s]+@[^@\s]+$", v)
                           else "must be an e-mail address or \"\""),
        "public_url": Key(str, "https://cmdop.example.com",
                          "URL people and agents use; its origin is CSRF- and WebSocket-trusted.",
                          _https_url),
        "debian_release": Key(str, "bookworm", "Debian release of every host (bookworm = 12).",
                              _choice("bookworm")),
        "key_file": Key(str, "", "Where the secrets.enc key lives; kept OUT of this folder so a "
                        "copy of the site folder reveals no secret. CMDOP_INSTALL_KEY (base64) "
                        "overrides it. `init` sets it (default "
                        "~/.config/cmdop-install/keys/<name>-<id>.key); empty: env only.",
                        _abs_or_empty),
        "tls_cert_file": Key(str, "", "Public certificate chain (PEM) for domain, e.g. from your "
                             "ACME client. Empty: nginx presents a certificate of the site's "
                             "internal CA, which agents trust (browsers will not).",
                             _abs_or_empty),
        "tls_key_file": Key(str, "", "Private key (PEM) of tls_cert_file; set both or neither.",
                            _abs_or_empty),
    },
    "postgres": {
        "major": Key(int, 15, "PostgreSQL major version (Debian 12 ships 15).", _range(13, 17)),
        "port": Key(int, 5432, "TCP port (TLS only).", _range(1, 65535)),
        "database": Key(str, "cmdop", "Application database.", _match(_PG_ROLE, "a SQL name")),
        "role_prefix": Key(str, "cmdop", "Roles: <prefix>_owner (NOLOGIN, owns objects), "
                           "<prefix>_blue and <prefix>_green (LOGIN, alternate on rotation).",
                           _match(_PG_ROLE, "a SQL name")),
        "active_role": Key(str, "blue", "Which login role the control plane uses first; "
                           "after a rotation, the site's rotation.json says which one.",
                           _choice("blue", "green")),
        "max_connections": Key(int, 100, "Server connection limit.", _range(10, 5000)),
        "shared_buffers": Key(str, "256MB", "Shared buffer size.", _match(_SIZE, "a size")),
    },
    "redis": {
        "port": Key(int, 6379, "TLS port (the plain port is always 0).", _range(1, 65535)),
        "maxmemory": Key(str, "256mb", "Memory cap.", _match(_SIZE, "a size like 256mb")),
    },
    "control_plane": {
        "https_port": Key(int, 443, "nginx HTTPS port (TLS 1.3 only).", _range(1, 65535)),
        "http_port": Key(int, 80, "nginx HTTP port: redirects to HTTPS, serves nothing.",
                         _range(1, 65535)),
        "workers": Key(int, 4, "gunicorn worker processes per host.", _range(1, 64)),
        "worker_connections": Key(int, 4096, "Open connections per worker (asgi): each "
                                  "enrolled agent holds one long-poll.", _range(64, 65536)),
        "long_poll_seconds": Key(int, 25, "How long an agent poll waits for work (the agent "
                                 "protocol caps it at 25 s); nginx and gunicorn time out later.",
                                 _range(5, 25)),
        "max_upload_mb": Key(int, 50, "Largest file transfer / request body.", _range(1, 4096)),
    },
    "rate_limits": {
        "auth_per_minute": Key(int, 10, "Authentication requests per client IP.", _range(1, 10000)),
        "session_per_minute": Key(int, 100, "Session operations per client.", _range(1, 100000)),
        "file_per_minute": Key(int, 50, "File operations per client.", _range(1, 100000)),
        "input_kb_per_minute": Key(int, 1024, "What one person's terminals may type and paste "
                                   "a minute, in KiB (keystrokes are not session operations).",
                                   _range(1, 1048576)),
    },
    "sessions": {
        "idle_timeout_minutes": Key(int, 30, "A browser terminal nobody typed in for this long "
                                    "ends its session (audited); 0 never.", _range(0, 1440)),
    },
    "tokens": {
        "access_ttl_seconds": Key(int, 3600, "Access token lifetime (1 hour).",
                                  _range(60, 86400)),
        "refresh_ttl_days": Key(int, 30, "Refresh token lifetime.", _range(1, 365)),
    },
    "audit": {
        "retention_days": Key(int, 90, "Audit rows older than this are deleted daily.",
                              _range(1, 3650)),
    },
    "backup": {
        "schedule": Key(str, "daily", "When the database host backs the databases up "
                        "(systemd OnCalendar=, e.g. \"*-*-* 03:15\"); \"\" turns the timer "
                        "off.", _calendar),
        "keep": Key(int, 7, "Scheduled backups kept on the database host (the oldest go).",
                    _range(1, 365)),
        "directory": Key(str, "/var/backups/cmdop", "Where the database host writes them "
                         "(a folder of root's, 0700; each backup 0600).", _backup_dir),
    },
    "rotation": {
        "max_age_days": Key(int, 90, "`check` warns about a rotatable secret older than this "
                            "(`cmdop-install rotate` renews it).", _range(1, 3650)),
    },
    "centrifugo": {
        "binary": Key(str, "", "Path to a centrifugo v6 binary on this machine; \"\" turns "
                      "Centrifugo off (live output then uses the REST cursor API).",
                      _abs_or_empty),
        "port": Key(int, 8000, "Public WebSocket port (proxied by nginx).", _range(1, 65535)),
        "internal_port": Key(int, 9000, "HTTP API port, loopback only.", _range(1, 65535)),
    },
    "firewall": {
        "admin_sources": Key(str, "", "Comma-separated addresses or networks that may reach "
                             "Postgres and Redis besides the control-plane hosts (e.g. a "
                             "backup host); every other source is refused on those ports.",
                             _sources),
    },
    "metrics": {
        "allowed_sources": Key(str, "", "Comma-separated addresses or networks of the "
                               "Prometheus servers that may scrape https://<domain>/metrics "
                               "(docs/monitoring.md); every other source is refused. "
                               "\"\": nobody.", _sources),
    },
    "agent": {
        "user": Key(str, "cmdop-agent", "Unprivileged user the agent runs as on fleet hosts; "
                    "sessions get exactly its permissions. Never a service account.",
                    _agent_user),
        "output_limit_kb": Key(int, 1024, "Largest output batch an agent sends.",
                               _range(16, 65536)),
    },
    "bundle": {
        "file": Key(str, "", "A signed offline bundle (`cmdop-install bundle build`) every "
                    "deploy and rollout installs from, with no network: Debian packages only "
                    "from its repository, wheels only from its wheelhouse. \"\": online.",
                    _abs_or_empty),
        "pubkey": Key(str, "", "The public key the bundle must be signed with (the .pub of "
                      "`bundle keygen`); required with a bundle.", _abs_or_empty),
    },
    "pki": {
        "ca_days": Key(int, 3650, "Internal CA lifetime.", _range(365, 7300)),
        "leaf_days": Key(int, 397, "Leaf certificate lifetime.", _range(30, 825)),
        "renew_days": Key(int, 30, "Reissue (and warn in check) this many days before expiry.",
                          _range(1, 180)),
    },
}


class Site(dict):
    """The parsed site: ``site["postgres"]["port"]`` with every default filled in."""

    @property
    def centrifugo_enabled(self) -> bool:
        return bool(self["centrifugo"]["binary"])

    @property
    def public_tls(self) -> bool:
        """nginx presents an operator-supplied (publicly trusted) certificate."""
        return bool(self["site"]["tls_cert_file"])


def default_site(name: str = "cmdop") -> Site:
    site = Site({sec: {k: key.default for k, key in keys.items()} for sec, keys in SCHEMA.items()})
    site["site"]["name"] = name
    return site


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_site_toml(values: Site) -> str:
    """The commented site.toml that ``init`` writes: every key, its doc and its default."""
    out = [
        "# CMDOP self-hosted site: every operator decision, with its default.",
        "# Edit freely; `cmdop-install check` validates it. Secrets are NOT kept here",
        "# (they are generated into secrets.enc; pin one with `cmdop-install secrets set`).",
    ]
    for section, keys in SCHEMA.items():
        out += ["", f"[{section}]"]
        for name, key in keys.items():
            out.append(f"# {key.doc} Default: {_toml_value(key.default)}.")
            out.append(f"{name} = {_toml_value(values[section][name])}")
    return "\n".join(out) + "\n"


def _line_of(text: str, section: str, key: str | None = None) -> int:
    """Best line number for [section] key (1-based); 1 when it cannot be found."""
    current = None
    section_line = 1
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if header:
            current = header.group(1)
            if current == section:
                section_line = number
                if key is None:
                    return number
            continue
        if current == section and key and re.match(rf"^\"?{re.escape(key)}\"?\s*=", line):
            return number
    return section_line


def _type_name(t: type | tuple[type, ...]) -> str:
    names: dict[type | tuple[type, ...], str] = {
        int: "an integer", str: "a string", bool: "true or false", list: "a list"
    }
    return names.get(t) or str(getattr(t, "__name__", t))


def parse_site(text: str, filename: str = SITE_FILE) -> Site:
    """Parse and validate site.toml text. Any problem: UserError(exit 2) with its line."""

    def fail(line: int, key: str, what: str, fix: str) -> UserError:
        return UserError(f"{filename}:{line}: {key}: {what} ({fix})", EXIT_MALFORMED)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else 1
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise fail(line, "syntax", reason.lower(), "fix the TOML syntax on that line") from None

    site = default_site()
    for section, table in data.items():
        if section not in SCHEMA:
            raise fail(_line_of(text, section), section, "unknown section",
                       "known: " + ", ".join(SCHEMA))
        if not isinstance(table, dict):
            raise fail(_line_of(text, section), section, "must be a [table]",
                       f"write [{section}] and its keys below it")
        for name, value in table.items():
            dotted = f"{section}.{name}"
            line = _line_of(text, section, name)
            key = SCHEMA[section].get(name)
            if key is None:
                raise fail(line, dotted, "unknown key",
                           f"known in [{section}]: " + ", ".join(SCHEMA[section]))
            wrong_type = not isinstance(value, key.type) or (
                isinstance(value, bool) and key.type is not bool
            )
            if wrong_type:
                raise fail(line, dotted, f"must be {_type_name(key.type)}",
                           f"e.g. {name} = {_toml_value(key.default)}")
            problem = key.check(value) if key.check else None
            if problem:
                raise fail(line, dotted, problem, f"default is {_toml_value(key.default)}")
            site[section][name] = value
    public = site["site"]["public_url"].rstrip("/")
    if public.split("://", 1)[1].split(":")[0] != site["site"]["domain"]:
        raise fail(_line_of(text, "site", "public_url"), "site.public_url",
                   "host differs from site.domain", "use https://<domain>")
    if bool(site["site"]["tls_cert_file"]) != bool(site["site"]["tls_key_file"]):
        raise fail(_line_of(text, "site", "tls_cert_file"), "site.tls_cert_file",
                   "tls_cert_file and tls_key_file go together", "set both or neither")
    if site["pki"]["leaf_days"] <= site["pki"]["renew_days"]:
        raise fail(_line_of(text, "pki", "leaf_days"), "pki.leaf_days",
                   "must be longer than pki.renew_days", "or every init would reissue")
    return site


def load_site(site_dir: Path) -> Site:
    path = Path(site_dir) / SITE_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (run `cmdop-install init {site_dir}`)",
                        EXIT_MALFORMED) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({type(exc).__name__})", EXIT_MALFORMED) from None
    return parse_site(text, filename=SITE_FILE)
