"""Agent configuration (TOML, written by the installer) and the credential file.

Example ``~/.config/cmdop-agent/agent.toml`` (mode 0600, owned by the agent's user)::

    server = "https://cmdop.example.com"
    ca_file = "/home/ops/.config/cmdop-agent/site-ca.pem"   # or "system"
    # optional, defaults shown
    credential_file = "<config dir>/credential.json"
    state_dir = "~/.local/state/cmdop-agent"
    key_dir = "~/.local/share/cmdop-agent/keys"
    reconnect_max_delay = 120    # seconds: the cap of the jittered reconnect backoff
    [limits]
    output_buffer_bytes = 262144
    output_rate_bytes = 1048576
    file_max_bytes = 1048576
    command_timeout = 600
    command_output_bytes = 1048576
    max_sessions = 32
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError
from .files import read_private, write_private


def default_config_path() -> Path:
    env = os.environ.get("CMDOP_AGENT_CONFIG")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "cmdop-agent" / "agent.toml"


# The reconnect backoff's cap (docs/agent-protocol.md: full jitter, cap 120 s). A site may
# lower it (a small fleet that should come back quickly) or raise it up to 10 minutes (a
# large one, spread wider after a control-plane restart); below 1 s is a retry storm.
RECONNECT_MAX_DELAY = 120.0
RECONNECT_MAX_DELAY_RANGE = (1.0, 600.0)


@dataclass(frozen=True)
class Limits:
    output_buffer_bytes: int = 256 * 1024
    output_rate_bytes: int = 1024 * 1024
    file_max_bytes: int = 1024 * 1024
    command_timeout: int = 600
    command_output_bytes: int = 1024 * 1024
    max_sessions: int = 32


@dataclass(frozen=True)
class Config:
    path: Path
    server: str
    ca_file: Path | None  # None: the system trust store
    credential_file: Path
    state_dir: Path
    key_dir: Path
    limits: Limits = field(default_factory=Limits)
    reconnect_max_delay: float = RECONNECT_MAX_DELAY

    @property
    def host(self) -> str:
        return urlsplit(self.server).hostname or ""


def _path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(f"config: {key} must be a non-empty path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_config(path: Path) -> Config:
    raw = read_private(path)
    try:
        data = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    server = data.get("server")
    parts = urlsplit(server) if isinstance(server, str) else None
    if not isinstance(server, str) or parts is None or parts.scheme != "https" \
            or not parts.hostname:
        raise ConfigError(f"{path}: server must be an https:// URL (TLS cannot be disabled)")
    base = path.parent
    ca = data.get("ca_file", "system")
    home = Path.home()
    state_default = Path(os.environ.get("XDG_STATE_HOME") or home / ".local/state")
    data_default = Path(os.environ.get("XDG_DATA_HOME") or home / ".local/share")
    limits_raw = data.get("limits", {})
    try:
        limits = Limits(**{k: int(v) for k, v in limits_raw.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: [limits]: {exc}") from None
    reconnect = data.get("reconnect_max_delay", RECONNECT_MAX_DELAY)
    low, high = RECONNECT_MAX_DELAY_RANGE
    if isinstance(reconnect, bool) or not isinstance(reconnect, int | float) \
            or not low <= reconnect <= high:
        raise ConfigError(f"{path}: reconnect_max_delay must be {low:g} to {high:g} seconds")
    config = Config(
        path=path,
        server=server.rstrip("/"),
        ca_file=None if ca == "system" else _path(ca, "ca_file", base),
        credential_file=_path(data.get("credential_file", "credential.json"),
                              "credential_file", base),
        state_dir=_path(data.get("state_dir", str(state_default / "cmdop-agent")),
                        "state_dir", base),
        key_dir=_path(data.get("key_dir", str(data_default / "cmdop-agent" / "keys")),
                      "key_dir", base),
        limits=limits,
        reconnect_max_delay=float(reconnect),
    )
    if config.ca_file is not None and not config.ca_file.is_file():
        raise ConfigError(f"{path}: ca_file {config.ca_file} does not exist")
    return config


def load_credential(config: Config) -> dict:
    raw = read_private(config.credential_file)
    try:
        cred = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{config.credential_file}: not valid JSON") from None
    if not isinstance(cred, dict) or cred.get("kind") not in ("machine", "oauth"):
        raise ConfigError(f"{config.credential_file}: not a cmdop-agent credential")
    if cred.get("server") != config.server:
        raise ConfigError(
            f"{config.credential_file} was issued by {cred.get('server')}, the config points "
            f"at {config.server}; enroll again"
        )
    return cred


def save_credential(config: Config, cred: dict) -> None:
    write_private(config.credential_file, json.dumps(cred, indent=1, sort_keys=True).encode())
