"""The backend: Django's, with the pooled wait of ``cmdop_server.postgres``."""

from __future__ import annotations

import time
from typing import Any

from django.db.backends.postgresql import base
from psycopg_pool import PoolTimeout

from cmdop_server import metrics
from cmdop_server.postgres import server_refusing


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self.pool  # type: ignore[attr-defined]  # Django 5.1+, not in django-stubs yet
        if pool is None:
            return super().get_new_connection(conn_params)
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
