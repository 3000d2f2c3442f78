"""Django for the control-plane tests only: settings are chosen here, not repo-wide, so the
installer and agent suites never load Django.

Integration tests get a scratch Postgres (databases ``test_cmdop`` and
``test_cmdop_audit``, made by pytest-django) and a scratch Redis, once per session, from
tests/support/services.py; Redis is flushed before each integration test.
"""

from __future__ import annotations

import os

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cmdop_server.settings.test")
django.setup()
# Loaded now; keep the choice out of the environment that every later test (and its
# subprocesses) inherits. Our own subprocesses name their settings explicitly.
os.environ.pop("DJANGO_SETTINGS_MODULE")

from tests.support.services import PostgresServer, RedisServer  # noqa: E402
from tests.support.stash import SERVICES as _SERVICES  # noqa: E402


def _services(config: pytest.Config) -> tuple:
    """One Postgres and one Redis per test run, even when another conftest re-exports these
    fixtures (tests/server_sessions does): a second copy of a session fixture would
    otherwise start a second pair and point Django at databases that were never created."""
    if _SERVICES not in config.stash:
        pg = PostgresServer().__enter__()
        try:
            rd = RedisServer().__enter__()
        except BaseException:
            pg.stop()
            raise
        config.stash[_SERVICES] = (pg, rd)
        config.add_cleanup(pg.stop)
        config.add_cleanup(rd.stop)
    return config.stash[_SERVICES]


@pytest.fixture(scope="session")
def postgres_server(request):
    return _services(request.config)[0]


@pytest.fixture(scope="session")
def redis_server(request):
    return _services(request.config)[1]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(postgres_server, redis_server):
    from cmdop_server import redis_client
    from django.conf import settings

    for alias in ("default", "audit"):
        settings.DATABASES[alias]["PORT"] = str(postgres_server.port)
    settings.CMDOP_REDIS = {"host": redis_server.host, "port": redis_server.port}
    redis_client.client.cache_clear()
    os.environ.update({
        "CMDOP_TEST_PG_PORT": str(postgres_server.port),
        "CMDOP_TEST_REDIS_PORT": str(redis_server.port),
        "CMDOP_TEST_DB_CMDOP": "test_cmdop",
        "CMDOP_TEST_DB_CMDOP_AUDIT": "test_cmdop_audit",
    })


@pytest.fixture(autouse=True)
def _fresh_redis(request):
    if request.node.get_closest_marker("integration") is None:
        yield
        return
    request.getfixturevalue("django_db_modify_db_settings")
    from cmdop_server import redis_client

    redis_client.client().flushdb()
    yield
