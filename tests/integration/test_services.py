"""The shared test daemons themselves: plain Postgres and Redis start, answer, and stop."""

import psycopg
import pytest
import redis

from tests.support.services import PostgresServer, RedisServer

pytestmark = pytest.mark.integration


def test_plain_postgres_answers_and_stops():
    with PostgresServer() as pg:
        pg.psql("CREATE DATABASE app")
        with psycopg.connect(pg.dsn(dbname="app")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        data_dir = pg.dir
    assert not data_dir.exists()


def test_plain_redis_answers_and_stops():
    with RedisServer() as r:
        client = redis.Redis(host=r.host, port=r.port)
        assert client.ping()
        proc = r.proc
    assert proc is None or proc.poll() is not None
