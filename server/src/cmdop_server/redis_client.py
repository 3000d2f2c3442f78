"""The one module that talks to Redis: a process-wide client built from settings.CMDOP_REDIS."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref

import redis
import redis.asyncio
import redis.asyncio.retry
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import StreamRangeResponse

# Failing fast (issue 19.3): with Redis down a request answers 503 within half a second and
# the next one after Redis returns succeeds; redis-py's default (three retries with a
# backoff of up to 10 s each) made a user-API call take about 3 s to fail. Every command we
# send is a single key operation answered in well under a millisecond. A Redis that is down
# refuses the connection at once; these bounds cap a hung one. They leave room for a busy
# 2-core host, where 0.2/0.3 s (TLS handshake in Python included) refused live requests with
# 503 on the lab.
CONNECT_TIMEOUT = 1.0  # seconds to open a connection (TLS handshake included)
READ_TIMEOUT = 1.0  # seconds for a command's reply
# one immediate retry on a broken connection (a Redis restarted since the connection was
# opened leaves it dead; the retry reconnects), none after a timeout (that would double it)
RETRIES = 1


def _timeouts(subscriber: bool = False) -> dict:
    return {"socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": None if subscriber else READ_TIMEOUT}


def key(name: str) -> str:
    """A key under the site's prefix (server.toml [redis] key_prefix; the ACL allows no other)."""
    return settings.CMDOP_REDIS_KEY_PREFIX + name


@functools.cache
def client() -> redis.Redis:
    return redis.Redis(
        **_timeouts(), health_check_interval=30,
        retry=Retry(NoBackoff(), RETRIES, supported_errors=(redis.ConnectionError,)),
        **settings.CMDOP_REDIS,
    )


# Async clients for the long-poll views, one per event loop (a redis.asyncio connection
# pool belongs to the loop that created it). Added by the machines/sessions work (issue 5).
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
ASYNC_POOL_SIZE = 32


def async_client(subscriber: bool = False) -> redis.asyncio.Redis:
    """The running loop's client; ``subscriber=True`` gives one without a read timeout,
    for a pub/sub connection that is idle by design."""
    loop = asyncio.get_running_loop()
    clients = _async_clients.setdefault(loop, {})
    if subscriber not in clients:
        plain = redis.asyncio.Redis(
            **_timeouts(subscriber), health_check_interval=30,
            retry=redis.asyncio.retry.Retry(NoBackoff(), RETRIES,
                                            supported_errors=(redis.ConnectionError,)),
            **settings.CMDOP_REDIS,
        )
        # thousands of parked long-polls re-read at once when woken: they queue for one of
        # a bounded set of connections instead of failing with MaxConnectionsError
        pool = redis.asyncio.BlockingConnectionPool(
            connection_class=plain.connection_pool.connection_class,
            max_connections=ASYNC_POOL_SIZE, timeout=20,
            **plain.connection_pool.connection_kwargs,
        )
        clients[subscriber] = redis.asyncio.Redis(connection_pool=pool)
    return clients[subscriber]


# how long a worker's start waits for its Redis pool: with Redis down it starts anyway (and
# fails fast)
WARM_SECONDS = 3.0


async def warm() -> None:
    """Open the running loop's whole pool before the worker serves. A worker that starts
    cold (the service restarted, every agent reconnecting at once) met the wave of
    long-polls with its connections still to open, each a TLS handshake on an event loop
    busy with the wave: some took longer than CONNECT_TIMEOUT and their polls answered 503
    (48 of 2,000 on a lab host; 34 with 8 opened ahead, the pool growing during the wave)."""
    pool = async_client().connection_pool
    results = await asyncio.gather(*(pool.get_connection() for _ in range(ASYNC_POOL_SIZE)),
                                   return_exceptions=True)
    for connection in results:
        if not isinstance(connection, BaseException):
            await pool.release(connection)


def warmed_at_start(app):
    """Wrap an ASGI app: at the server's lifespan startup (gunicorn's asgi worker sends it
    before it accepts a connection) the worker's Redis pool is warmed; everything else goes
    to ``app`` (Django itself takes no lifespan messages)."""

    async def application(scope, receive, send):
        if scope["type"] != "lifespan":
            return await app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                with contextlib.suppress(Exception):  # Redis down: serve, refusing fast
                    await asyncio.wait_for(warm(), WARM_SECONDS)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return application


def text(value: bytes | str | None) -> str:
    """A reply as text. Our clients return bytes; redis-py's types also allow str (a client
    with decode_responses) and None (a missing key or field), which reads as ""."""
    return value.decode() if isinstance(value, bytes) else (value or "")


def stream_entries(reply: StreamRangeResponse | None) -> list[tuple[str, dict[str, str]]]:
    """An XRANGE reply as (entry id, fields) pairs of text."""
    return [(text(entry_id), {text(k): text(v) for k, v in (fields or {}).items()})
            for entry_id, fields in reply or []]


def __getattr__(name: str) -> str:
    # ``redis_client.KEY_PREFIX`` reads the configured prefix at access time
    if name == "KEY_PREFIX":
        return settings.CMDOP_REDIS_KEY_PREFIX
    raise AttributeError(name)
