"""Where ``cmdop`` finds its server, CA and credential: flags, then the environment, then
``~/.cmdop/config.yaml``, then the login stored by ``cmdop login`` (``~/.cmdop/login.json``).

``config.yaml`` is a flat list of ``key: value`` lines (a subset of YAML the standard library
can read without a YAML parser)::

    server: https://cmdop.example.com
    ca: /home/me/.cmdop/site-ca.pem     # or "system" (the default)
    api_key: cmd_live_...                # or export CMDOP_API_KEY=cmd_live_...
    workspace: acme                      # when your login has several workspaces

Like ssh, a config or login file that group or others can read is refused (chmod 600).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..files import read_private, write_private

KEYS = ("server", "ca", "api_key", "workspace")


def home_dir() -> Path:
    return Path(os.environ.get("CMDOP_HOME") or Path.home() / ".cmdop")


@dataclass(frozen=True)
class Settings:
    server: str
    ca_file: Path | None  # None: the system trust store
    api_key: str | None
    workspace: str | None
    home: Path

    @property
    def login_file(self) -> Path:
        return self.home / "login.json"

    @property
    def key_dir(self) -> Path:
        return self.home / "keys"


def parse_config(path: Path) -> dict[str, str]:
    """The flat ``key: value`` file; a line it cannot read is an error naming file and line."""
    values: dict[str, str] = {}
    for number, line in enumerate(read_private(path).decode(errors="replace").splitlines(), 1):
        text = line.split(" #", 1)[0].strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or key not in KEYS:
            raise ConfigError(f"{path}:{number}: expected one of {', '.join(KEYS)} as "
                              "'key: value'")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def https_url(value: str, where: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{where}: server must be an https:// URL (TLS cannot be disabled)")
    return value.rstrip("/")


def load_login(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        login = json.loads(read_private(path))
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON; run cmdop login again") from None
    if not isinstance(login, dict) or login.get("kind") != "oauth":
        raise ConfigError(f"{path}: not a cmdop login; run cmdop login again")
    return login


def save_login(path: Path, login: dict) -> None:
    write_private(path, json.dumps(login, indent=1, sort_keys=True).encode())


def resolve(server: str | None, ca: Path | None, workspace: str | None) -> tuple[Settings,
                                                                                  dict | None]:
    """The settings for this run and the stored login (None: none, or an API key is used)."""
    home = home_dir()
    config_file = home / "config.yaml"
    config = parse_config(config_file) if config_file.exists() else {}
    login = load_login(home / "login.json")
    api_key = os.environ.get("CMDOP_API_KEY") or config.get("api_key") or None
    where = "--server"
    if server is None:
        server, where = os.environ.get("CMDOP_SERVER"), "CMDOP_SERVER"
    if server is None:
        server, where = config.get("server"), str(config_file)
    if server is None and login is not None:
        server, where = login.get("server"), str(home / "login.json")
    if not server:
        raise ConfigError("no server: run cmdop login --server https://… (or set server in "
                          f"{config_file})")
    server = https_url(server, where)
    ca_text = str(ca) if ca is not None else (os.environ.get("CMDOP_CA") or config.get("ca")
                                              or (login or {}).get("ca") or "system")
    ca_file = None if ca_text == "system" else Path(ca_text).expanduser()
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"CA file {ca_file} does not exist")
    if login is not None and login.get("server") != server:
        login = None  # a login for another server is not this one's
    workspace = (workspace or os.environ.get("CMDOP_WORKSPACE") or config.get("workspace")
                 or (login or {}).get("workspace"))
    return Settings(server, ca_file, api_key, workspace, home), None if api_key else login
