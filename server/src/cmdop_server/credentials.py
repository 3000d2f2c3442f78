"""How every credential is generated, hashed and recognised. Entropy is stated per kind.

All credentials are stored as ``sha256_hex(value)`` and looked up by that digest; the
digest read back is compared again with ``hmac.compare_digest`` (constant time).

API key format (a scanner can tell a real key from noise without the database)::

    cmd_live_<30 base62 chars: 178.6 bits from secrets.choice><6 base62 chars: checksum>

The checksum is CRC-32 (``zlib.crc32``) of the UTF-8 text before it (prefix + random
part), written as 6 base62 digits, zero-padded, most significant first (GitHub's scheme).
``cmd_test_`` keys come from dev sites and use the same layout.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
API_KEY_PREFIXES = ("cmd_live_", "cmd_test_")
API_KEY_RANDOM_LENGTH = 30  # 30 * log2(62) = 178.6 bits
API_KEY_CHECKSUM_LENGTH = 6  # 62**6 > 2**32, so every CRC-32 fits

ACCESS_TOKEN_PREFIX = "cmd_at_"  # noqa: S105 - a prefix, not a secret
REFRESH_TOKEN_PREFIX = "cmd_rt_"  # noqa: S105 - a prefix, not a secret
TOKEN_BYTES = 32  # access/refresh tokens and device codes: 256 bits from token_urlsafe

# RFC 8628 §6.1: 20 consonants (no vowels: no words), 8 characters = 20**8 = 34.6 bits.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
# The first half finds the pending request a guess was aimed at, so wrong guesses can be
# counted against it (5 kill it); only the whole code approves.
USER_CODE_LOOKUP_LENGTH = 4


# Recovery codes (the second factor's spare keys): 16 characters of the RFC 4648 base32
# alphabet = 80 bits from secrets.choice, shown as XXXX-XXXX-XXXX-XXXX, single use, stored
# as SHA-256 digests (80 random bits are beyond offline guessing of a leaked digest).
RECOVERY_CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
RECOVERY_CODE_LENGTH = 16
RECOVERY_CODES_PER_USER = 10
# TOTP secrets: 32 base32 characters = 160 bits (RFC 4226 §4 recommends 160), from
# secrets.choice; kept readable (a code is checked against it), never shown after enrolment.
TOTP_SECRET_LENGTH = 32


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def same_digest(stored: str, value: str) -> bool:
    return hmac.compare_digest(stored.encode(), sha256_hex(value).encode())


def new_access_token() -> str:
    return ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def new_refresh_token() -> str:
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def new_device_code() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_user_code() -> str:
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def normalize_user_code(typed: str) -> str:
    """What the person typed, without dashes/spaces, upper-cased (RFC 8628 §6.1)."""
    return "".join(ch for ch in typed.upper() if ch.isalnum())


def format_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def user_code_lookup(code: str) -> str:
    return sha256_hex("lookup:" + code[:USER_CODE_LOOKUP_LENGTH])


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(BASE62[rem])
    return "".join(reversed(digits)).rjust(width, "0")


def api_key_checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), API_KEY_CHECKSUM_LENGTH)


def new_api_key(prefix: str) -> str:
    if prefix not in API_KEY_PREFIXES:
        raise ValueError(f"unknown API key prefix {prefix!r}")
    body = prefix + "".join(secrets.choice(BASE62) for _ in range(API_KEY_RANDOM_LENGTH))
    return body + api_key_checksum(body)


def looks_like_api_key(value: str) -> bool:
    """Offline check (format + checksum): what a secret scanner does, no database."""
    prefix = next((p for p in API_KEY_PREFIXES if value.startswith(p)), None)
    if prefix is None:
        return False
    expected_len = len(prefix) + API_KEY_RANDOM_LENGTH + API_KEY_CHECKSUM_LENGTH
    if len(value) != expected_len or any(ch not in BASE62 for ch in value[len(prefix):]):
        return False
    body, checksum = value[:-API_KEY_CHECKSUM_LENGTH], value[-API_KEY_CHECKSUM_LENGTH:]
    return hmac.compare_digest(api_key_checksum(body), checksum)


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_CODE_ALPHABET) for _ in range(RECOVERY_CODE_LENGTH))
    return "-".join(raw[i:i + 4] for i in range(0, RECOVERY_CODE_LENGTH, 4))


def normalize_recovery_code(typed: str) -> str:
    """Upper-cased, without dashes/spaces, re-grouped: the form its digest was taken of."""
    raw = "".join(ch for ch in typed.upper() if ch.isalnum())
    return "-".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def new_totp_secret() -> str:
    return "".join(secrets.choice(RECOVERY_CODE_ALPHABET) for _ in range(TOTP_SECRET_LENGTH))
