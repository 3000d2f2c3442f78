"""The bounded per-session output buffer in Redis and the cursor reads over it.

Layout::

    app:out:<session pk>        stream; entry fields: kind, data (JSON), size (bytes)
    app:out:<session pk>:meta   hash: bytes (held now), dropped_bytes, dropped_through (id)
    app:out:wake                pub/sub channel; message = session pk that got output

A Lua script appends and, in the same atomic step, deletes the oldest entries until the
session holds at most ``CMDOP_SESSION_OUTPUT_MAX_BYTES``: memory stays bounded whatever the
machine sends. A reader whose cursor is older than the last trimmed entry gets a
``{"type": "dropped"}`` marker first, so a gap is never silent. A chunk larger than the
whole cap keeps its tail (the newest bytes). Output expires a day after its last write.

An append may carry ``once=(boot_id, seq)``, the agent event it comes from: the meta hash
keeps the highest seq taken per boot (field ``once:<boot_id>``) and the same event is never
appended twice, so a batch of agent events can be appended before its transaction commits
and sent again by the agent if the commit fails.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from django.conf import settings

from cmdop_server import redis_client, workqueue

WAKE_CHANNEL = "out:wake"  # under the site prefix: redis_client.key()
CURSOR_PREFIX = "o_"
DEFAULT_MAX_BYTES = 1024 * 1024
TTL_SECONDS = 24 * 3600
READ_BATCH = 200

_APPEND = """
local key, meta = KEYS[1], KEYS[2]
local cap, size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[6] ~= '' then
  if tonumber(ARGV[7]) <= tonumber(redis.call('HGET', meta, ARGV[6]) or '0') then
    return false
  end
  redis.call('HSET', meta, ARGV[6], ARGV[7])
end
local id = redis.call('XADD', key, '*', 'kind', ARGV[4], 'data', ARGV[5], 'size', ARGV[2])
local total = redis.call('HINCRBY', meta, 'bytes', size)
while total > cap do
  local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
  if #first == 0 or first[1][1] == id then break end
  local fields, fsize = first[1][2], 0
  for i = 1, #fields, 2 do
    if fields[i] == 'size' then fsize = tonumber(fields[i + 1]) end
  end
  redis.call('XDEL', key, first[1][1])
  total = redis.call('HINCRBY', meta, 'bytes', -fsize)
  redis.call('HINCRBY', meta, 'dropped_bytes', fsize)
  redis.call('HSET', meta, 'dropped_through', first[1][1])
end
redis.call('EXPIRE', key, ttl)
redis.call('EXPIRE', meta, ttl)
return id
"""


def max_bytes() -> int:
    return int(getattr(settings, "CMDOP_SESSION_OUTPUT_MAX_BYTES", DEFAULT_MAX_BYTES))


def _key(session_pk: int) -> str:
    return redis_client.key(f"out:{session_pk}")


Once = tuple[str, int]  # (agent boot id, event seq)


def append_output(session_pk: int, data: bytes, once: Once | None = None) -> str | None:
    """Terminal bytes (untrusted: stored and returned base64, never interpreted). Returns
    the entry id, or None when ``once`` names an event this session already took."""
    cap = max_bytes()
    if len(data) > cap:
        data = data[-cap:]
    return _append(session_pk, "output", {"data_b64": base64.b64encode(data).decode()},
                   len(data), once)


def append_record(session_pk: int, kind: str, record: dict,
                  once: Once | None = None) -> str | None:
    """A result or status record (command.result, file.result, work.error, status)."""
    body = json.dumps(record, separators=(",", ":"))
    return _append(session_pk, kind, record, min(len(body), max_bytes()), once)


def _append(session_pk: int, kind: str, record: dict, size: int,
            once: Once | None) -> str | None:
    r = redis_client.client()
    key = _key(session_pk)
    tag, seq = (f"once:{once[0]}", once[1]) if once else ("", 0)
    entry = r.eval(_APPEND, 2, key, key + ":meta", max_bytes(), max(size, 1), TTL_SECONDS,
                   kind, json.dumps(record, separators=(",", ":")), tag, seq)
    if entry is None:
        return None
    workqueue.wake(WAKE_CHANNEL, session_pk)
    return entry.decode() if isinstance(entry, bytes) else entry


def held_bytes(session_pk: int) -> int:
    return int(redis_client.client().hget(_key(session_pk) + ":meta", "bytes") or 0)


@dataclass(frozen=True)
class Page:
    items: list[dict]
    cursor: str


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def parse_cursor(cursor: str | None) -> str:
    if not cursor:
        return "0-0"
    if not cursor.startswith(CURSOR_PREFIX):
        raise workqueue.BadCursor("cursor is not one this control plane issued")
    raw = cursor[len(CURSOR_PREFIX):]
    try:
        ms, seq = _id(raw)
    except ValueError:
        raise workqueue.BadCursor("cursor is not one this control plane issued") from None
    return f"{ms}-{seq}"


async def _read(session_pk: int, after: str) -> Page:
    r = redis_client.async_client()
    key = _key(session_pk)
    entries = redis_client.stream_entries(
        await r.xrange(key, min=f"({after}", max="+", count=READ_BATCH))
    items: list[dict] = []
    dropped_through = redis_client.text(await r.hget(key + ":meta", "dropped_through"))
    if dropped_through and _id(after) < _id(dropped_through):
        dropped = int(await r.hget(key + ":meta", "dropped_bytes") or 0)
        items.append({"type": "dropped", "dropped_bytes_total": dropped,
                      "detail": "Older output was dropped: the session's buffer is full."})
        after = dropped_through
    items += [{"type": f["kind"], **json.loads(f["data"])} for _, f in entries]
    return Page(items, CURSOR_PREFIX + (entries[-1][0] if entries else after))


async def read(session_pk: int, cursor: str | None, wait: float) -> Page:
    """Output after ``cursor``: at once if there is some, else within ``wait`` seconds."""
    after = parse_cursor(cursor)
    return await workqueue.wait_until(WAKE_CHANNEL, session_pk, lambda: _read(session_pk, after),
                                      wait)
