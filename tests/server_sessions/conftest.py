"""Machines/sessions tests reuse the control-plane fixtures (scratch Postgres and Redis,
Django on settings.test, Redis flushed per integration test) from tests/server."""

from tests.server.conftest import (  # noqa: F401
    _fresh_redis,
    django_db_modify_db_settings,
    postgres_server,
    redis_server,
)
