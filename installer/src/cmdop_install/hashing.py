"""One-way forms of secrets for servers that should never hold the plaintext.

Redis ACL files take ``#<sha256 hex>``; Postgres takes a SCRAM-SHA-256 verifier in
``ALTER ROLE … PASSWORD '<verifier>'``, so neither the file nor the SQL (logs, ``ps``,
pg_stat_activity) ever carries the password itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SCRAM_ITERATIONS = 4096  # Postgres' default scram_iterations


def redis_acl_hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def scram_sha256_verifier(password: str, salt: bytes | None = None,
                          iterations: int = SCRAM_ITERATIONS) -> str:
    """The verifier Postgres stores (RFC 5802/7677), as PQencryptPasswordConn makes it."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
