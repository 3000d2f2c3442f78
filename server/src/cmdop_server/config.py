"""The one module that reads the control plane's configuration and secrets from disk.

Contract (written down for the installer in docs/server-config.md):

- Secrets: one file per secret in the credentials directory, which is
  ``$CMDOP_CONFIG_DIR`` if set, else systemd's ``$CREDENTIALS_DIRECTORY``
  (``LoadCredential=``), else ``/etc/cmdop/credentials``. Files: ``secret_key``,
  ``secret_key_fallbacks`` (one key per line, newest first), ``db_password``,
  ``audit_db_password`` (optional: defaults to ``db_password``), ``redis_password``,
  ``totp_key`` (one per line, newest first: what TOTP secrets are sealed with).
  Trailing newlines are stripped. Nothing here ever logs a value.
- Everything else: a TOML file, ``$CMDOP_SERVER_TOML`` or ``/etc/cmdop/server.toml``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

DEFAULT_CREDENTIALS_DIR = "/etc/cmdop/credentials"
DEFAULT_SERVER_TOML = "/etc/cmdop/server.toml"


def credentials_dir() -> Path:
    return Path(
        os.environ.get("CMDOP_CONFIG_DIR")
        or os.environ.get("CREDENTIALS_DIRECTORY")
        or DEFAULT_CREDENTIALS_DIR
    )


def read_secret(name: str, default: str | None = None) -> str:
    """The secret in file ``name`` of the credentials dir, stripped of trailing newlines."""
    path = credentials_dir() / name
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        if default is not None:
            return default
        raise ImproperlyConfigured(f"missing secret file {path}") from None
    if not value:
        raise ImproperlyConfigured(f"secret file {path} is empty")
    return value


def read_secret_lines(name: str) -> list[str]:
    """A secret file holding one value per line (e.g. SECRET_KEY_FALLBACKS); may be absent."""
    path = credentials_dir() / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_server_toml() -> dict[str, Any]:
    path = Path(os.environ.get("CMDOP_SERVER_TOML") or DEFAULT_SERVER_TOML)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ImproperlyConfigured(f"missing server config {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ImproperlyConfigured(f"invalid TOML in {path}: {exc}") from None
