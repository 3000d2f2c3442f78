"""The secrets store: the ONE module that reads or writes secret values.

``secrets.enc`` in the site folder holds every generated secret, encrypted with
AES-256-GCM (``cryptography``). Layout (format 2)::

    CMDOPSEC2\n | key check (16) | nonce (12) | ciphertext+tag | SHA-256 of all before (32)

The key check is derived from the key (HKDF, its own label), so a wrong key is told apart
from a damaged file: the digest catches accidental damage without any key; a right key
check with a failing GCM tag means the content was modified. The plaintext is JSON
``{"version": 1, "secrets": {name: {"value", "created", "source"}}}``; during a rotation an
entry also holds ``next`` (the staged value) or ``previous`` (the value it replaced, until
``rotate --finish``), each ``{"value", "created"}``; after a rollback ``previous`` may
hold the abandoned newer value (``"rolled_back": true``) until the next rotation replaces
it. Format 1 files (``CMDOPSEC1\n | nonce | ciphertext+tag``, no key check) are still
read, and the next save (``init``, ``secrets set``, ``rotate``) writes them as format 2.

The 32-byte key comes from ``CMDOP_INSTALL_KEY`` (base64) or from the key file named by
``[site] key_file`` — by default under ``~/.config/cmdop-install/keys/``, i.e. OUTSIDE the
site folder, so the folder (which operators version and back up) reveals nothing on its
own. The key file is 0600 and refused if anyone else can read it.

Backup archives (``seal_file``/``open_sealed``) use the same AEAD under their own HKDF
labels: ``CMDOPBAK1\n | key check (16) | nonce prefix (8)``, then 1 MiB chunks, each sealed
with nonce ``prefix | counter`` and the header plus a last-chunk flag as associated data, so
a cut, reordered or extended archive fails like a changed byte does.

Rules (Zulip generate_secrets, omnibus-gitlab secrets json): only missing names are
generated; an existing secret is never regenerated; a value the operator pins
(``cmdop-install secrets set NAME`` reading stdin) wins and is checked for strength;
writes are atomic and 0600; nothing is written when nothing changed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import secrets as _random
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cmdop_install.errors import UserError
from cmdop_install.fsutil import make_dir, write_atomic

SECRETS_FILE = "secrets.enc"
KEY_ENV = "CMDOP_INSTALL_KEY"
MAGIC = b"CMDOPSEC2\n"
_MAGIC_V1 = b"CMDOPSEC1\n"
_AAD_V1 = b"cmdop-install secrets.enc v1"
_KEY_CHECK_BYTES = 16
_NONCE_BYTES = 12
_TAG_BYTES = 16
_DIGEST_BYTES = 32
_RESTORE = "restore it from a backup"
# backup archives: MAGIC | key check (16) | nonce prefix (8) | 1 MiB chunks, each AES-256-GCM
# sealed with nonce prefix|counter and the header plus a last-chunk flag as associated data
ARCHIVE_MAGIC = b"CMDOPBAK1\n"
_ARCHIVE_PREFIX_BYTES = 8
_ARCHIVE_CHUNK = 1 << 20
_KEY_FORMAT = "one line of base64 encoding 32 bytes, as `cmdop-install init` writes it"


@dataclass(frozen=True)
class SecretSpec:
    doc: str
    min_length: int = 32


# Entropy of generated values: token_urlsafe(n) = n random bytes = 8n bits.
SPECS: dict[str, SecretSpec] = {
    "django_secret_key": SecretSpec("Django SECRET_KEY (signing; rotated via fallbacks)", 50),
    "postgres_password_blue": SecretSpec("Postgres login role <prefix>_blue"),
    "postgres_password_green": SecretSpec("Postgres login role <prefix>_green"),
    "postgres_password_admin": SecretSpec(
        "Postgres login role <prefix>_admin (app migrations only; never the service's)"
    ),
    "postgres_password_audit_admin": SecretSpec(
        "Postgres login role <prefix>_audit_admin (audit migrations only; never the service's)"
    ),
    "redis_password_app": SecretSpec("Redis ACL user of the control plane"),
    "redis_password_centrifugo": SecretSpec("Redis ACL user of Centrifugo"),
    "redis_password_admin": SecretSpec(
        "Redis ACL user that may only ACL LOAD (the installer, on the Redis host's root-only "
        "socket)"
    ),
    "centrifugo_hmac_key": SecretSpec("Centrifugo connection/subscription JWT HMAC key"),
    "centrifugo_api_key": SecretSpec("Centrifugo HTTP API key (X-API-Key)"),
    "agent_join_key": SecretSpec("Signing key of agent join tokens"),
    "totp_key": SecretSpec(
        "Key the control plane seals people's TOTP secrets with in its database (never "
        "derived from django_secret_key, whose rotation must leave them readable)", 50),
    "owner_password": SecretSpec("The first Owner's dashboard password (change it on login)", 24),
}
_GENERATED_BYTES = 48  # 384 bits; 64 url-safe characters
_ALLOWED = re.compile(r"^[A-Za-z0-9!#$%&()*+,\-./:;<=>?@\[\]^_{|}~]+$")


def _derive(key: bytes, label: bytes) -> bytes:
    """32 bytes for one purpose, derived from the secrets key (HKDF-SHA256, label as info)."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=label).derive(key)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def weakness(name: str, value: str) -> str | None:
    """Why a pinned value is not acceptable, or None. Never includes the value."""
    spec = SPECS[name]
    if not _ALLOWED.match(value):
        return "use printable ASCII with no spaces, quotes or backslashes"
    if len(value) < spec.min_length:
        return f"too short: at least {spec.min_length} characters"
    if len(set(value)) < 10:
        return "too few distinct characters (at least 10)"
    if re.fullmatch(r"(.{1,16}?)\1+", value):
        return "repeats a short pattern"
    if value.lower().startswith("django-insecure-"):
        return "looks like a development key (django-insecure-)"
    classes = [r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9]"]
    alphabet = sum(size for pat, size in zip(classes, (26, 26, 10, 32), strict=True)
                   if re.search(pat, value))
    if len(value) * math.log2(alphabet) < 128:
        return "too little entropy (need about 128 bits: longer or more varied)"
    return None


def default_key_path(site_name: str) -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "cmdop-install" / "keys" / f"{site_name}-{_random.token_hex(4)}.key"


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise UserError(f"{source}: not a key (expected {_KEY_FORMAT})")
    return key


def resolve_key(key_file: str, create: bool = False) -> tuple[bytes, str]:
    """(key, where it came from). ``create`` makes a new key file when none exists."""
    env = os.environ.get(KEY_ENV)
    if env:
        return _decode_key(env, KEY_ENV), KEY_ENV
    if not key_file:
        raise UserError(f"no secrets key: set {KEY_ENV} or [site] key_file in site.toml")
    path = Path(key_file)
    if path.exists():
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise UserError(f"{path}: key file is accessible by others (chmod 600 {path})")
            raw = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot read key file ({exc.strerror})") from None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a key file: it holds binary data "
                            f"(expected {_KEY_FORMAT})") from None
        return _decode_key(text, str(path)), str(path)
    if not create:
        raise UserError(f"no secrets key: {path} does not exist (restore it or set {KEY_ENV})")
    make_dir(path.parent, 0o700)
    key = AESGCM.generate_key(bit_length=256)
    write_atomic(path, base64.b64encode(key) + b"\n", 0o600)
    return key, str(path)


class SecretStore:
    """Decrypted secrets of one site, in memory; ``save`` writes only if something changed."""

    def __init__(self, site_dir: Path, key: bytes, key_source: str) -> None:
        self.path = Path(site_dir) / SECRETS_FILE
        self._aead = AESGCM(key)
        self._pki_passphrase = base64.b64encode(_derive(key, b"cmdop-install pki private keys v1"))
        self._key_check = _derive(key, b"cmdop-install secrets.enc key check v2")[
            :_KEY_CHECK_BYTES]
        self._archive = AESGCM(_derive(key, b"cmdop-install backup archive v1"))
        self._archive_check = _derive(key, b"cmdop-install backup key check v1")[
            :_KEY_CHECK_BYTES]
        self.key_source = key_source
        self._entries: dict[str, dict[str, str]] = {}
        self._dirty = False
        if self.path.exists():
            self._entries = self._read()

    @classmethod
    def open(cls, site_dir: Path, key_file: str, create_key: bool = False) -> SecretStore:
        exists = (Path(site_dir) / SECRETS_FILE).exists()
        # Never mint a new key for an existing store: that would lock the operator out.
        key, source = resolve_key(key_file, create=create_key and not exists)
        return cls(site_dir, key, source)

    def _read(self) -> dict[str, dict[str, str]]:
        blob = self.path.read_bytes()
        if blob.startswith(_MAGIC_V1):
            plain = self._decrypt_v1(blob)
            self._dirty = True  # the next save writes format 2
        elif blob.startswith(MAGIC):
            plain = self._decrypt(blob)
        else:
            raise UserError(f"{SECRETS_FILE}: damaged or not a cmdop-install secrets file "
                            f"(unknown header; {_RESTORE})")
        try:
            return json.loads(plain)["secrets"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{SECRETS_FILE}: decrypted but not a secrets document "
                            f"({_RESTORE})") from None

    def _decrypt(self, blob: bytes) -> bytes:
        body, digest = blob[:-_DIGEST_BYTES], blob[-_DIGEST_BYTES:]
        header_end = len(MAGIC) + _KEY_CHECK_BYTES
        sealed_start = header_end + _NONCE_BYTES
        if len(body) < sealed_start + _TAG_BYTES or not hmac.compare_digest(
                hashlib.sha256(body).digest(), digest):
            raise UserError(f"{SECRETS_FILE}: damaged: its checksum does not match (truncated "
                            f"or changed on disk; {_RESTORE})")
        if not hmac.compare_digest(body[len(MAGIC): header_end], self._key_check):
            raise UserError(f"cannot decrypt {SECRETS_FILE}: wrong key ({self._key_hint()})")
        try:
            return self._aead.decrypt(
                body[header_end:sealed_start], body[sealed_start:], body[:header_end])
        except InvalidTag:
            raise UserError(f"{SECRETS_FILE}: modified: the key is right but the content does "
                            f"not authenticate ({_RESTORE})") from None

    def _decrypt_v1(self, blob: bytes) -> bytes:
        if len(blob) < len(_MAGIC_V1) + _NONCE_BYTES + _TAG_BYTES:
            raise UserError(f"{SECRETS_FILE}: damaged (truncated; {_RESTORE})")
        nonce = blob[len(_MAGIC_V1): len(_MAGIC_V1) + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(_MAGIC_V1) + _NONCE_BYTES:], _AAD_V1)
        except InvalidTag:
            raise UserError(
                f"cannot decrypt {SECRETS_FILE}: wrong key ({self._key_hint()}) or a damaged "
                "file; this format 1 file carries no key check to tell which") from None

    def _key_hint(self) -> str:
        return KEY_ENV if self.key_source == KEY_ENV else f"{KEY_ENV} or {self.key_source}"

    def save(self) -> bool:
        """Encrypt and write atomically (0600) if anything changed; True when written."""
        if not self._dirty:
            return False
        plain = json.dumps({"version": 1, "secrets": self._entries}, sort_keys=True).encode()
        header = MAGIC + self._key_check
        nonce = os.urandom(_NONCE_BYTES)
        body = header + nonce + self._aead.encrypt(nonce, plain, header)
        write_atomic(self.path, body + hashlib.sha256(body).digest(), 0o600)
        self._dirty = False
        return True

    def ensure_all(self) -> list[str]:
        """Generate every missing secret; return the names generated (never values)."""
        made = []
        for name in SPECS:
            if name not in self._entries:
                value = _random.token_urlsafe(_GENERATED_BYTES)
                self._entries[name] = {"value": value, "created": _now(), "source": "generated"}
                made.append(name)
        self._dirty = self._dirty or bool(made)
        return made

    def pin(self, name: str, value: str) -> None:
        """Set an operator-chosen value; it wins over (and replaces) a generated one."""
        if name not in SPECS:
            raise UserError(f"unknown secret {name!r} (known: {', '.join(SPECS)})")
        problem = weakness(name, value)
        if problem:
            raise UserError(f"secret {name}: rejected, {problem}; nothing was changed")
        self._entries[name] = {"value": value, "created": _now(), "source": "operator"}
        self._dirty = True

    def stage(self, name: str) -> bool:
        """Generate the next value of ``name`` for a rotation, kept beside the current one
        until ``promote``; an already staged value is kept (a resumed rotation reuses it)."""
        entry = self._entry(name)
        if "next" in entry:
            return False
        entry["next"] = {"value": _random.token_urlsafe(_GENERATED_BYTES), "created": _now()}
        self._dirty = True
        return True

    def promote(self, name: str, keep_previous: bool = True) -> None:
        """The staged value becomes current; the current one is kept as ``previous`` (until
        ``drop_previous``) unless ``keep_previous`` is False. No-op when nothing is staged."""
        entry = self._entry(name)
        staged = entry.pop("next", None)
        if staged is None:
            return
        if keep_previous:
            entry["previous"] = {"value": entry["value"], "created": entry["created"]}
        entry.update(value=staged["value"], created=staged["created"], source="rotated")
        self._dirty = True

    def demote(self, name: str, keep_newer: bool = False) -> None:
        """Undo ``promote``: the previous value is current again. The newer one is dropped,
        or with ``keep_newer`` becomes ``previous`` (marked ``rolled_back``, which a second
        demote leaves alone) so that what it signed meanwhile still verifies."""
        entry = self._entry(name)
        previous = entry.get("previous")
        if previous is None or previous.get("rolled_back"):
            return
        del entry["previous"]
        if keep_newer:
            entry["previous"] = {"value": entry["value"], "created": entry["created"],
                                 "rolled_back": True}
        entry.update(value=previous["value"], created=previous["created"])
        self._dirty = True

    def restage(self, name: str) -> None:
        """Undo ``promote`` back to the staged state: the previous value is current again and
        the newer one is ``next`` once more (a server still admitting it keeps it admitted
        while its clients move back). No-op unless promoted."""
        entry = self._entry(name)
        previous = entry.pop("previous", None)
        if previous is None:
            return
        entry["next"] = {"value": entry["value"], "created": entry["created"]}
        entry.update(value=previous["value"], created=previous["created"])
        self._dirty = True

    def drop_staged(self, name: str) -> None:
        self._dirty = self._entry(name).pop("next", None) is not None or self._dirty

    def drop_previous(self, name: str) -> None:
        """Destroy the value a rotation replaced: from now on only the current one exists."""
        self._dirty = self._entry(name).pop("previous", None) is not None or self._dirty

    def previous(self, name: str) -> str | None:
        entry = self._entry(name).get("previous")
        return entry["value"] if entry else None

    def created(self, name: str) -> datetime:
        return datetime.strptime(self._entry(name)["created"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=UTC)

    def _entry(self, name: str) -> dict:
        self.get(name)  # one line for an unknown or missing name
        return self._entries[name]

    def get(self, name: str) -> str:
        if name not in SPECS:
            raise UserError(f"unknown secret {name!r} (known: {', '.join(SPECS)})")
        entry = self._entries.get(name)
        if entry is None:
            raise UserError(f"secret {name} not generated yet (run `cmdop-install init`)")
        return entry["value"]

    def seal_file(self, src: Path, dest: Path) -> None:
        """``src`` encrypted into ``dest`` (a backup archive; see ``open_sealed``), 0600."""
        header = ARCHIVE_MAGIC + self._archive_check + os.urandom(_ARCHIVE_PREFIX_BYTES)
        prefix = header[-_ARCHIVE_PREFIX_BYTES:]
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with src.open("rb") as plain, os.fdopen(fd, "wb") as out:
            out.write(header)
            chunk, counter = plain.read(_ARCHIVE_CHUNK), 0
            while True:
                following = plain.read(_ARCHIVE_CHUNK)
                last = b"\x01" if not following else b"\x00"
                nonce = prefix + counter.to_bytes(4, "big")
                out.write(self._archive.encrypt(nonce, chunk, header + last))
                if not following:
                    break
                chunk, counter = following, counter + 1
            out.flush()
            os.fsync(out.fileno())

    def open_sealed(self, src: Path, dest: Path) -> None:
        """Decrypt a ``seal_file`` archive into ``dest`` (0600), or one line saying why not:
        not an archive, another key (another site's), or damaged/modified (any changed,
        missing, reordered or appended byte: each 1 MiB chunk is authenticated with its
        position and whether it is the last)."""
        head = len(ARCHIVE_MAGIC) + _KEY_CHECK_BYTES + _ARCHIVE_PREFIX_BYTES
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with src.open("rb") as sealed, os.fdopen(fd, "wb") as out:
            header = sealed.read(head)
            if len(header) < head or not header.startswith(ARCHIVE_MAGIC):
                raise UserError(f"{src}: not a cmdop-install backup archive")
            if not hmac.compare_digest(header[len(ARCHIVE_MAGIC):-_ARCHIVE_PREFIX_BYTES],
                                       self._archive_check):
                raise UserError(f"{src}: made with another secrets key (another site's, or "
                                f"this site's before a new key; {self._key_hint()})")
            prefix, counter = header[-_ARCHIVE_PREFIX_BYTES:], 0
            size = _ARCHIVE_CHUNK + _TAG_BYTES
            chunk = sealed.read(size)
            while True:
                following = sealed.read(size)
                last = b"\x01" if not following else b"\x00"
                try:
                    out.write(self._archive.decrypt(prefix + counter.to_bytes(4, "big"), chunk,
                                                    header + last))
                except InvalidTag:
                    raise UserError(f"{src}: damaged or modified (its content does not "
                                    "authenticate with this site's key)") from None
                if not following:
                    return
                chunk, counter = following, counter + 1

    def pki_passphrase(self) -> bytes:
        """Passphrase of the private keys in pki/, derived from the secrets key (HKDF), so
        the site folder holds no usable private key without the key kept apart."""
        return self._pki_passphrase

    def values(self, admit: tuple[str, ...] = ()) -> dict[str, str]:
        """Every secret by name, for rendering, plus ``<name>:previous`` for each value a
        rotation replaced and still keeps valid, and ``<name>:next`` for the staged value of
        each name in ``admit`` (servers accept it before clients use it). Callers must not
        print it."""
        values = {name: self.get(name) for name in SPECS}
        for name in SPECS:
            previous = self.previous(name)
            if previous is not None:
                values[f"{name}:previous"] = previous
            staged = self._entry(name).get("next")
            if staged is not None and name in admit:
                values[f"{name}:next"] = staged["value"]
        return values

    def listing(self) -> list[dict[str, str]]:
        """Names with creation time, age and source: everything except values."""
        now = datetime.now(UTC)
        rows = []
        for name in SPECS:
            entry = self._entries.get(name)
            if entry is None:
                rows.append({"name": name, "created": "-", "age": "missing", "source": "-"})
                continue
            days = (now - self.created(name)).days
            rows.append({"name": name, "created": entry["created"], "age": f"{days}d",
                         "source": entry["source"]})
        return rows
