"""Database connections under ASGI: a request's own thread closes what it opened.

Django's ASGI handler runs each request's sync code (middleware, views, signals) in a
thread made for that request, and the thread ends with it. A connection such a thread
opens is kept for reuse (CONN_MAX_AGE), but nothing can reuse it: the thread is gone, and
the connection stays open until the garbage collector happens to free it — in a quiet
worker, for many minutes (issue 12.5: 90+ connections against max_connections 100).
So under ASGI every request closes its thread's connections when it finishes. The only
connections that outlive a request belong to ``pool()``, a worker's few long-lived threads
for the database work of async views (``in_pool``): at most CMDOP_DB_POOL_THREADS per
database and worker, reused and recycled after CONN_MAX_AGE. At rest a control-plane host
therefore holds at most workers x pool threads x 2 (the app and audit databases)
connections. Like a request, each call ends with Django's close_old_connections: with the
psycopg pool (server.toml pool_max_size) the thread gives its connection back (kept by an
idle thread, each would be a pool connection no request can have), with conn_max_age 0 it
closes it, and one past its age goes then, not at that thread's next call, which may never
come (a test process that made one call kept the connection to its end).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.db import close_old_connections, connections

T = TypeVar("T")


@functools.cache
def pool() -> ThreadPoolExecutor:
    """This worker's threads whose connections persist (made after the fork)."""
    return ThreadPoolExecutor(settings.CMDOP_DB_POOL_THREADS, thread_name_prefix="cmdop-db")


def release_thread_connections() -> None:
    """Close the calling thread's connections (a transaction in progress keeps its own)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def in_pool(fn: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``fn`` as an awaitable run on this worker's database threads (``pool()``)."""

    def run(*args: Any) -> T:
        close_old_connections()
        try:
            return fn(*args)
        finally:
            close_old_connections()

    return sync_to_async(run, thread_sensitive=False, executor=pool())


def _request_finished(sender: Any, **kwargs: Any) -> None:
    # Django sends this from the request's own thread (response.close() runs there)
    if isinstance(sender, type) and issubclass(sender, ASGIHandler):
        release_thread_connections()


def connect() -> None:
    request_finished.connect(_request_finished, dispatch_uid="cmdop_release_connections")
