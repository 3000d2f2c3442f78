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

This module imports no Django database code, so settings can name what is here.
"""

from __future__ import annotations

from typing import Any

import psycopg

# seconds of one step of a request's wait for a pooled connection: what a request costs
# while the server refuses connections
WAIT_STEP = 0.2

Server = tuple[str, str, str]

# servers (host, port, database) whose latest connection attempt from this process failed;
# a set's add and discard are atomic under the GIL, and the pool's threads write it
_refusing: set[Server] = set()


def _server(params: dict[str, Any]) -> Server:
    return (str(params.get("host", "")), str(params.get("port", "")),
            str(params.get("dbname", "")))


def server_refusing(params: dict[str, Any]) -> bool:
    """Whether this process's latest attempt to connect to the server ``params`` name (the
    connection parameters Django gives the pool) failed."""
    return _server(params) in _refusing


class WatchedConnection(psycopg.Connection):
    """The pools' connection class: each attempt to open one records whether the server
    took it (the pool opens them in its own threads, where no request sees the error)."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> WatchedConnection:
        server = _server(kwargs)
        try:
            connection = super().connect(conninfo, **kwargs)
        except psycopg.OperationalError:
            _refusing.add(server)
            raise
        _refusing.discard(server)
        return connection
