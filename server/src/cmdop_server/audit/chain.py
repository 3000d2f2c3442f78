"""The tamper-evident chain: each audit row carries ``row_hash`` = SHA-256 over the previous
row's hash (same workspace; rows without a workspace form their own chain) and a canonical
encoding of the row's own fields. Changing, inserting or deleting a row in the middle
breaks every later link; ``verify`` walks the chains and names the first broken row.

After retention has deleted a chain's oldest rows, the oldest remaining row is the anchor:
its ``prev_hash`` cannot be checked any more, everything after it still is. Removing the
*newest* rows is not detectable from the chain alone (keep an exported copy or the hash of
the last row elsewhere for that).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC

GENESIS = "0" * 64
FIELDS = ("occurred_at", "event", "success", "workspace_id", "user_id", "user_label",
          "method", "ip", "reason", "data")


def _ip(value) -> str | None:
    # packed bytes: Postgres's inet may print an address differently from how it was given
    return ipaddress.ip_address(value).packed.hex() if value else None


def canonical(row) -> bytes:
    """One row's fields, encoded the same way at write time and at verify time."""
    values = {
        "occurred_at": row.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "event": row.event, "success": bool(row.success), "workspace_id": row.workspace_id,
        "user_id": row.user_id, "user_label": row.user_label, "method": row.method,
        "ip": _ip(row.ip), "reason": row.reason, "data": row.data,
    }
    return json.dumps(values, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def link(prev_hash: str, row) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(row)).hexdigest()


@dataclass(frozen=True)
class Break:
    workspace_id: int | None
    row_id: int
    problem: str


def verify(rows) -> list[Break]:
    """Check rows (ordered by workspace, then id); returns every broken link found."""
    breaks: list[Break] = []
    previous: dict[int | None, str] = {}
    for row in rows:
        chain = row.workspace_id
        if chain in previous and row.prev_hash != previous[chain]:
            breaks.append(Break(chain, row.pk, "prev_hash does not match the previous row"))
        if link(row.prev_hash, row) != row.row_hash:
            breaks.append(Break(chain, row.pk, "row_hash does not match the row's contents"))
        previous[chain] = row.row_hash
    return breaks
