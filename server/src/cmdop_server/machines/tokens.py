"""How join tokens, machine credentials and public ids are made. Entropy per kind:

- join token ``jt_`` + ``token_urlsafe(32)``: 256 bits; machine credential ``mc_`` + 256 bits.
- public ids (``m_``, ``s_``) are not secrets: ``token_urlsafe(12)`` = 96 bits, only so that
  ids are not guessable or enumerable across workspaces.
"""

from __future__ import annotations

import secrets

JOIN_TOKEN_PREFIX = "jt_"  # noqa: S105 - a prefix, not a secret
MACHINE_CREDENTIAL_PREFIX = "mc_"
SECRET_BYTES = 32
PUBLIC_ID_BYTES = 12


def new_join_token() -> str:
    return JOIN_TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def new_machine_credential() -> str:
    return MACHINE_CREDENTIAL_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def new_public_id(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(PUBLIC_ID_BYTES)
