"""Django's PostgreSQL backend (``ENGINE = "cmdop_server.postgres"``), whose pooled requests
give up at once while the server refuses connections.

A pooled request waits for a connection (a free one, or one the pool is opening) for up to
the database's ``POOL_TIMEOUT`` seconds (server.toml ``pool_timeout``). That wait is right
while the server is up and every connection busy, and wasted while it is down: the pool
retries in its own threads, and the request learnt of it only when its whole timeout had
passed (2 s per request on a deployed site; issue 19 allows 0.5 s). So a request waits in
steps of the pool's own ``timeout`` (``WAIT_STEP``) and, between two, gives up once the
latest attempt of this process to open a connection to that server has failed
(``WatchedConnection``, the pools' connection class, records it). ``base`` is the backend.

A server that drops packets instead of refusing them (a host gone dark, a firewall) answers
nothing at all: without limits a new connection waited for the kernel's SYN retries (over
two minutes) and a query on a kept one for TCP's retransmissions (about 15 minutes), the
request with it. Every connection is therefore made with ``CONNECT_TIMEOUT`` and
``TCP_USER_TIMEOUT_MS`` (``base``), and a kept connection that breaks marks its server too.
A broken kept connection says less than a refused attempt, though: after Postgres restarted,
every connection a pool kept is dead while the server takes new ones at once. So a request
gives up on a broken connection only when nothing from that server has succeeded for
``BROKEN_GRACE`` since (the pool opens a new connection meanwhile; a restart costs no
request), and on a refused attempt at once.

This module imports no Django database code, so settings can name what is here.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

# seconds of one step of a request's wait for a pooled connection: what a request costs
# while the server refuses connections
WAIT_STEP = 0.2
# libpq's connect_timeout, whole seconds: 2 is the least libpq (and psycopg) honours, a 1
# waits 2 s too. The TCP user timeout below ends an unanswered attempt sooner (at the
# first SYN retry, about 1 s): this bounds what it does not (a TLS handshake or login that
# started and stalled)
CONNECT_TIMEOUT = 2
# libpq's tcp_user_timeout, milliseconds: how long data sent to the server may stay
# unacknowledged before the kernel closes the connection. Postgres' kernel acknowledges a
# query at once, however long it then runs; only a server out of reach stays silent (the
# loss of one packet is resent after 0.2 s, well within it)
TCP_USER_TIMEOUT_MS = 500

# how long after a kept connection broke a request still waits for the pool to open a new
# one, while no attempt has failed and nothing succeeded: a new connection (TLS, SCRAM, a
# backend forked) takes milliseconds on a healthy server and well under a second on a busy
# one; a server out of reach fails the pool's attempt itself after about a second
BROKEN_GRACE = 1.0

# an unpooled connection is not tried again for this long after an attempt to its server
# failed: the requests meanwhile are refused at once instead of each waiting out its own
# attempt (up to a second with the server out of reach)
RETRY_AFTER = 1.0

Server = tuple[str, str, str]

# servers (host, port, database) whose latest connection attempt from this process failed,
# and when (time.monotonic); a dict's item set and pop are atomic under the GIL, and the
# pool's threads write it
_refusing: dict[Server, float] = {}
# servers a kept connection to broke since anything from them last succeeded, and when
_broken: dict[Server, float] = {}


def _server(params: dict[str, Any]) -> Server:
    return (str(params.get("host", "")), str(params.get("port", "")),
            str(params.get("dbname", "")))


def server_refusing(params: dict[str, Any]) -> bool:
    """Whether this process's latest attempt to connect to the server ``params`` name (the
    connection parameters Django gives the pool) failed, or a kept connection to it broke
    ``BROKEN_GRACE`` ago or more and nothing succeeded since."""
    server = _server(params)
    broke = _broken.get(server)
    return server in _refusing or (broke is not None
                                   and time.monotonic() - broke >= BROKEN_GRACE)


def refused_lately(params: dict[str, Any]) -> bool:
    """Whether that attempt failed less than ``RETRY_AFTER`` seconds ago."""
    failed = _refusing.get(_server(params))
    return failed is not None and time.monotonic() - failed < RETRY_AFTER


def _record(server: Server, ok: bool) -> None:
    if ok:
        _refusing.pop(server, None)
        _broken.pop(server, None)  # a new connection: the server is back
    else:
        _refusing[server] = time.monotonic()


def attempted(params: dict[str, Any], ok: bool) -> None:
    """Record how an attempt to connect to the server ``params`` name went."""
    _record(_server(params), ok)


class WatchedConnection(psycopg.Connection):
    """The pools' connection class: each attempt to open one records whether the server
    took it (the pool opens them in its own threads, where no request sees the error), and
    so does ``execute``, which is how the pool checks a connection before lending it: a
    check that passes is a success, one whose connection broke marks the server broken
    (with a server out of reach, the check is what meets the silence first)."""

    server: Server = ("", "", "")

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> WatchedConnection:
        server = _server(kwargs)
        try:
            connection = super().connect(conninfo, **kwargs)
        except psycopg.OperationalError:
            _record(server, ok=False)
            raise
        _record(server, ok=True)
        connection.server = server
        return connection

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = super().execute(*args, **kwargs)
        except psycopg.OperationalError:
            if self.broken:
                _broken.setdefault(self.server, time.monotonic())  # the first break counts
            raise
        if _broken:
            _broken.pop(self.server, None)
        return result
