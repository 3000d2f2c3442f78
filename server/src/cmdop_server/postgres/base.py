"""The backend: Django's, with the pooled wait of ``cmdop_server.postgres``."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg_pool import PoolTimeout

from cmdop_server import metrics
from cmdop_server.postgres import (
    CONNECT_TIMEOUT,
    TCP_USER_TIMEOUT_MS,
    attempted,
    refused_lately,
    server_refusing,
)


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        # every connection, pooled or not (the pool is made with these too): bounded when
        # the server drops packets instead of refusing them
        return {"connect_timeout": CONNECT_TIMEOUT, "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
                **super().get_connection_params()}

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self.pool  # type: ignore[attr-defined]  # Django 5.1+, not in django-stubs yet
        if pool is None:
            return self._unpooled(conn_params)
        started = time.monotonic()
        budget = float(self.settings_dict.get("POOL_TIMEOUT", pool.timeout))
        while True:
            try:
                return super().get_new_connection(conn_params)
            except PoolTimeout:
                waited = time.monotonic() - started
                refusing = server_refusing(conn_params)
                if not refusing and waited < budget:
                    continue  # the server is up and every connection busy: wait on
                if not refusing:  # a server refusing is counted as a database error
                    metrics.inc("cmdop_db_pool_timeouts_total", database=self.alias)
                why = "the server refuses connections" if refusing else "all in use"
                raise PoolTimeout(f"no pooled connection to the {self.alias!r} database "
                                  f"after {waited:.2f} s: {why}") from None

    def _unpooled(self, conn_params: dict[str, Any]) -> Any:
        """A connection of its own, refused at once for a while after an attempt failed."""
        if refused_lately(conn_params):
            raise psycopg.OperationalError(f"not connecting to the {self.alias!r} database: "
                                           "the latest attempt failed less than a second ago")
        try:
            connection = super().get_new_connection(conn_params)
        except psycopg.OperationalError:
            attempted(conn_params, ok=False)
            raise
        attempted(conn_params, ok=True)
        return connection
