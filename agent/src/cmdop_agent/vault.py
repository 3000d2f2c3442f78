"""Encryption at rest for the OAuth refresh token (standard library only).

Threat model, honestly:

* **Protects against** the credential file leaking on its own: a backup, a support bundle, a
  copied home directory, a file synced to another host. The sealing key is derived from a
  random 32-byte key kept in a *different* directory (``key_dir``, 0700, file 0600) **and**
  from ``/etc/machine-id``, so the credential file alone, or the credential file plus the key
  file moved to another machine, does not yield the refresh token. Tampering is detected.
* **Does not protect against** code running as the agent's user (or root) on this machine:
  it can read the key file and ``/etc/machine-id`` just as the agent does. No software-only
  scheme can; a TPM or OS keyring would be the next step and is not available to a
  standard-library agent on a headless server. The access token (1 hour) lives in the 0600
  credential file in clear, as the seed's token table allows ("memory / secure file").

Construction: HMAC-SHA256 as a PRF. ``master = HMAC(local_key, label || machine_id)``;
``enc_key``/``mac_key`` derived from it; keystream block *i* = ``HMAC(enc_key, nonce || i)``
(counter mode); ``tag = HMAC(mac_key, version || nonce || ciphertext)`` (encrypt-then-MAC),
compared in constant time. Nonce: 16 random bytes per sealing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from .errors import ConfigError
from .files import ensure_private_dir, read_private, write_private

_LABEL = b"cmdop-agent refresh-token v1\x00"
_PREFIX = "v1."
KEY_BYTES = 32  # 256 bits from the OS CSPRNG
NONCE_BYTES = 16


def _machine_id() -> bytes:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return Path(path).read_bytes().strip()
        except OSError:
            continue
    return b""


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


class Vault:
    """``relogin``: the command that makes a new login when the sealed token is lost."""

    def __init__(self, key_dir: Path, relogin: str = "cmdop-agent login") -> None:
        self.key_file = key_dir / "refresh.key"
        self.relogin = relogin

    def _keys(self, create: bool) -> tuple[bytes, bytes]:
        if not self.key_file.exists():
            if not create:
                raise ConfigError(f"key file {self.key_file} is missing; run {self.relogin}")
            ensure_private_dir(self.key_file.parent)
            write_private(self.key_file, secrets.token_bytes(KEY_BYTES))
        local = read_private(self.key_file)
        master = _hmac(local, _LABEL + _machine_id())
        return _hmac(master, b"enc"), _hmac(master, b"mac")

    def seal(self, plaintext: str) -> str:
        enc_key, mac_key = self._keys(create=True)
        nonce = os.urandom(NONCE_BYTES)
        data = plaintext.encode()
        ct = bytes(a ^ b for a, b in zip(data, _keystream(enc_key, nonce, len(data)), strict=True))
        tag = _hmac(mac_key, _PREFIX.encode() + nonce + ct)
        return _PREFIX + base64.b64encode(nonce + ct + tag).decode()

    def open(self, sealed: str) -> str:
        enc_key, mac_key = self._keys(create=False)
        try:
            if not sealed.startswith(_PREFIX):
                raise ValueError
            raw = base64.b64decode(sealed[len(_PREFIX):], validate=True)
        except ValueError:
            raise ConfigError(f"stored refresh token is malformed; run {self.relogin}") from None
        nonce, ct, tag = raw[:NONCE_BYTES], raw[NONCE_BYTES:-32], raw[-32:]
        if len(raw) < NONCE_BYTES + 32 or not hmac.compare_digest(
            tag, _hmac(mac_key, _PREFIX.encode() + nonce + ct)
        ):
            raise ConfigError(
                "stored refresh token cannot be decrypted (key file or machine changed); "
                f"run {self.relogin}"
            )
        return bytes(a ^ b for a, b in zip(ct, _keystream(enc_key, nonce, len(ct)), strict=True)
                     ).decode()


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (length + 31) // 32
    stream = b"".join(_hmac(key, nonce + i.to_bytes(8, "big")) for i in range(blocks))
    return stream[:length]
