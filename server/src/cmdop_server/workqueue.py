"""Work for agents: one Redis stream per machine, and the wake-up that ends a long-poll.

Layout (all under the site's key prefix, ``redis_client.key``; ``app:`` below)::

    app:wq:<machine pk>        stream; entry fields: id, type, session_id, created, payload
    app:wq:<machine pk>:ids    hash work id -> stream entry id (so an ack finds its entry)
    app:wq:wake                pub/sub channel; message = machine pk that got work

An item stays in the stream until the agent acknowledges it (``ack`` deletes the entry), so
"from the oldest unacknowledged item" is simply the start of the stream. The poll cursor is
the stream entry id of the last item a response carried: a response lost in transit is sent
again because the agent re-polls with the cursor of the last response it *processed*.

Waiting does not hold a Redis connection per poll: each event loop (one per gunicorn worker)
keeps ONE pub/sub subscription to ``app:wq:wake`` and wakes the local waiters of that
machine; every waiter then re-reads its stream (XRANGE, exclusive of its cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import weakref
from dataclasses import dataclass

import redis.exceptions
from django.utils import timezone
from redis.typing import EncodableT, FieldT, StreamRangeResponse

from cmdop_server import redis_client
from cmdop_server.machines.tokens import new_public_id

logger = logging.getLogger("cmdop.workqueue")

# A bound on unacknowledged work per machine: a machine that never polls cannot grow Redis
# without limit. The oldest unacknowledged items beyond it are trimmed (approximate MAXLEN).
STREAM_MAXLEN = 10_000
BATCH = 100
WAKE_CHANNEL = "wq:wake"  # under the site prefix: redis_client.key()
CURSOR_PREFIX = "c_"
WORK_ID_PREFIX = "w_"
_CURSOR_RE = re.compile(r"^c_(\d{1,20})-(\d{1,20})$")


class BadCursor(ValueError):
    pass


def stream_key(machine_pk: int) -> str:
    return redis_client.key(f"wq:{machine_pk}")


def _ids_key(machine_pk: int) -> str:
    return stream_key(machine_pk) + ":ids"


def enqueue(machine_pk: int, work_type: str, payload: dict, session_id: str = "",
            work_id: str | None = None) -> str:
    """Append one work item for a machine and wake its pollers; returns the work id.

    Callers inside a ``do_*`` action run this from ``transaction.on_commit`` (work exists
    only for committed state); pass a ``work_id`` made beforehand to return it to a client.
    """
    work_id = work_id or new_work_id()
    fields: dict[FieldT, EncodableT] = {
        "id": work_id, "type": work_type, "session_id": session_id,
        "created": timezone.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "payload": json.dumps(payload, separators=(",", ":")),
    }
    r = redis_client.client()
    entry = r.xadd(stream_key(machine_pk), fields, maxlen=STREAM_MAXLEN, approximate=True)
    pipe = r.pipeline(transaction=False)
    pipe.hset(_ids_key(machine_pk), work_id, entry)
    pipe.publish(redis_client.key(WAKE_CHANNEL), str(machine_pk))
    pipe.execute()
    return work_id


def new_work_id() -> str:
    return new_public_id(WORK_ID_PREFIX)


def ack(machine_pk: int, work_ids: list[str]) -> int:
    """Delete acknowledged items; unknown or already acknowledged ids are ignored."""
    ids = [w for w in work_ids if isinstance(w, str) and w.startswith(WORK_ID_PREFIX)]
    if not ids:
        return 0
    r = redis_client.client()
    entries = [e for e in r.hmget(_ids_key(machine_pk), ids) if e is not None]
    if not entries:
        return 0
    pipe = r.pipeline(transaction=True)
    pipe.xdel(stream_key(machine_pk), *entries)
    pipe.hdel(_ids_key(machine_pk), *ids)
    removed, _ = pipe.execute()
    return int(removed)


def parse_cursor(cursor: str | None) -> str:
    """The stream id after which to read ("0-0" = from the oldest unacknowledged item)."""
    if not cursor:
        return "0-0"
    match = _CURSOR_RE.match(cursor)
    if match is None:
        raise BadCursor("cursor is not one this control plane issued")
    return f"{match.group(1)}-{match.group(2)}"


@dataclass(frozen=True)
class Batch:
    items: list[dict]
    cursor: str


def _decode(reply: StreamRangeResponse | None, after: str) -> Batch:
    entries = redis_client.stream_entries(reply)
    items = []
    for _, f in entries:
        item = {"id": f["id"], "type": f["type"], "created": f["created"],
                "payload": json.loads(f["payload"])}
        if f.get("session_id"):
            item["session_id"] = f["session_id"]
        items.append(item)
    return Batch(items, CURSOR_PREFIX + (entries[-1][0] if entries else after))


async def _read(machine_pk: int, after: str) -> Batch:
    r = redis_client.async_client()
    entries = await r.xrange(stream_key(machine_pk), min=f"({after}", max="+", count=BATCH)
    return _decode(entries, after)


async def wait_for_work(machine_pk: int, cursor: str | None, wait: float) -> Batch:
    """Items after ``cursor`` at once if there are any, else the first to arrive within
    ``wait`` seconds, else an empty batch (with the same cursor)."""
    after = parse_cursor(cursor)
    return await wait_until(WAKE_CHANNEL, machine_pk, lambda: _read(machine_pk, after), wait)


async def wait_until(channel: str, key: int, read, wait: float):
    """``read()`` at once; if it found nothing, again when ``key`` is published on
    ``channel``, until about ``wait`` seconds have passed. ``read`` returns something with
    ``.items``. The wait is cut by up to a fifth at random: pollers that all started
    together (a control-plane restart) drift apart instead of re-polling in one storm."""
    if wait <= 0:
        return await read()
    hub = _hub(channel)
    event = hub.register(key)
    try:
        deadline = asyncio.get_running_loop().time() + wait * random.uniform(0.8, 1.0)
        first = True
        while True:
            # registered first, then clear and read: anything published from here on sets
            # the event, so nothing falls between the read and the wait
            event.clear()
            try:
                batch = await read()
            except redis.exceptions.ConnectionError:
                # The first read fails fast (the caller answers 503). A re-read after a wake
                # can meet a Redis that is going away (a wake already on its way when it
                # died): the poll stays parked, and the resubscription once Redis is back
                # wakes it again. Past the deadline, the failure is the answer.
                remaining = deadline - asyncio.get_running_loop().time()
                if first or remaining <= 0:
                    raise
                logger.warning("re-read after a wake-up failed; waiting for Redis to return")
                batch = None
            first = False
            remaining = deadline - asyncio.get_running_loop().time()
            if batch is not None and (batch.items or remaining <= 0):
                return batch
            if remaining <= 0:
                return await read()
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                if batch is not None:
                    # nothing was published for this key since that read (the event would
                    # be set): its empty answer stands, without a read more per idle poll
                    return batch
    finally:
        hub.unregister(key, event)


def wake(channel: str, key: int) -> None:
    redis_client.client().publish(redis_client.key(channel), str(key))


class _WakeHub:
    """One pub/sub subscription per (event loop, channel), fanning wake-ups out to local waiters."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.waiters: dict[int, set[asyncio.Event]] = {}
        self.task: asyncio.Task | None = None

    def register(self, machine_pk: int) -> asyncio.Event:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._listen())
        event = asyncio.Event()
        self.waiters.setdefault(machine_pk, set()).add(event)
        return event

    def unregister(self, machine_pk: int, event: asyncio.Event) -> None:
        waiting = self.waiters.get(machine_pk)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self.waiters[machine_pk]

    def _wake(self, machine_pk: int | None) -> None:
        targets = (self.waiters.get(machine_pk, ()) if machine_pk is not None
                   else [e for s in self.waiters.values() for e in s])
        for event in list(targets):
            event.set()

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = redis_client.async_client(subscriber=True).pubsub()
            try:
                await pubsub.subscribe(redis_client.key(self.channel))
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "message":
                        with contextlib.suppress(ValueError):
                            self._wake(int(message["data"]))
                    elif kind == "subscribe":
                        # (Re)subscribed: ours above, or redis-py's own after it reconnected
                        # on its own (a Redis restart). From here on nothing is missed;
                        # what was published before, every waiter re-reads now.
                        self._wake(None)
                        delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a Redis hiccup must not end the worker
                logger.warning("wake subscription lost (%s); resubscribing",
                               type(exc).__name__)
                await asyncio.sleep(delay)
                # at most a second: parked polls wait on this to see work sent meanwhile
                delay = min(delay * 2, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


_hubs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _hub(channel: str) -> _WakeHub:
    hubs = _hubs.setdefault(asyncio.get_running_loop(), {})
    if channel not in hubs:
        hubs[channel] = _WakeHub(channel)
    return hubs[channel]
