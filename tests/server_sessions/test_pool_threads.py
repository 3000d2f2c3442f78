"""The long-poll's database threads and the psycopg pool (issue 19 item 1): a thread of
``dbconn.pool()`` gives its pool connection back after each lookup, so agents polling
leave the pool's connections to the requests that need them.

Before, each of a worker's four lookup threads kept the connection it last used: with a
pool of two, two polling agents on two threads left no connection for anyone else, and
user-API calls waited out the pool's timeout and got 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import psycopg
import pytest
from cmdop_server import dbconn
from cmdop_server.identity import actions
from cmdop_server.identity.models import Membership
from django.conf import settings

from tests.server.helpers import make_user
from tests.server_sessions.helpers import enroll
from tests.server_sessions.test_fail_fast import copy_of_test_databases
from tests.support.control_plane import ApiError, ControlPlane, UserApi, until

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


@pytest.fixture
def small_pool(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path):
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log", workers=1,
                      env={"CMDOP_TEST_DB_POOL_MAX_SIZE": "2",
                           "CMDOP_TEST_DB_POOL_TIMEOUT": "1"}) as cp:
        yield cp


def test_polling_agents_leave_the_pool_to_requests(small_pool):
    from django.db import connection

    owner = make_user()
    ws = actions.do_create_workspace(owner, "pooled", "Pooled")
    _, key = actions.do_create_api_key(Membership.objects.in_workspace(ws).get(user=owner), "k")
    agents = [enroll(ws, owner)["credential"] for _ in range(4)]
    connection.close()

    def poll(credential: str) -> int:
        api = UserApi(small_pool.url, small_pool.pki.ca, credential, "")
        api.base = "/api/agent/v1"
        return api.answer_status("GET", "/work?wait=0")

    # concurrent polls: the lookups land on several of the worker's database threads
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        polled = list(pool.map(poll, agents * 6))
    assert set(polled) == {200}, polled
    user = UserApi(small_pool.url, small_pool.pki.ca, key, ws.slug)
    statuses = []
    for _ in range(10):
        try:
            user.call("GET", "/machines")
            statuses.append(200)
        except ApiError as exc:
            statuses.append(exc.status)
    user.close()
    assert statuses == [200] * 10


def test_a_restarted_postgres_costs_no_request(tls_pki, django_db_setup,
                                               django_db_modify_db_settings, tmp_path):
    """The pool checks a connection before lending it: after Postgres restarted, the
    connections it held are dead, and lending one would answer that request 503."""
    from django.db import connection

    owner = make_user()
    ws = actions.do_create_workspace(owner, "restarted", "Restarted")
    _, key = actions.do_create_api_key(Membership.objects.in_workspace(ws).get(user=owner), "k")
    connection.close()
    pg = copy_of_test_databases()
    try:
        env = {"CMDOP_TEST_PG_PORT": str(pg.port), "CMDOP_TEST_DB_POOL_MAX_SIZE": "4",
               "CMDOP_TEST_DB_POOL_TIMEOUT": "5"}
        with ControlPlane(tls_pki, tmp_path / "gunicorn.log", workers=1, env=env) as cp:
            user = UserApi(cp.url, cp.pki.ca, key, ws.slug)

            def burst() -> list[int]:
                with concurrent.futures.ThreadPoolExecutor(4) as pool:
                    return list(pool.map(lambda _: _status(user_api(cp, key, ws.slug)),
                                         range(8)))

            assert set(burst()) == {200}  # the pool now holds several connections
            pg.crash()
            pg.restart()
            assert burst() == [200] * 8
            user.close()
    finally:
        pg.stop()


def user_api(cp: ControlPlane, key: str, slug: str) -> UserApi:
    return UserApi(cp.url, cp.pki.ca, key, slug)


def _status(api: UserApi) -> int:
    return api.answer_status("GET", "/machines")


def _open_backends(pids: list[int]) -> list[int]:
    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                         dbname="postgres") as conn:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]).fetchall()]


def test_a_database_thread_keeps_no_connection_its_age_ends():
    """Unpooled with CONN_MAX_AGE 0 (the test settings), a call on the database threads
    closes what it opened when it ends, as a request does. Before, the thread kept both
    connections until its next call: in this process that was never, and pytest-django
    could not drop test_cmdop at the end of the run ('being accessed by other users')."""
    from django.db import connections

    assert settings.DATABASES["default"]["CONN_MAX_AGE"] == 0

    def lookup() -> list[int]:
        pids = []
        for alias in ("default", "audit"):
            with connections[alias].cursor() as cursor:
                pids.append(cursor.connection.info.backend_pid)
        return pids

    pids = asyncio.run(dbconn.in_pool(lookup)())
    # the backends end once they read the client's goodbye; the wait is for that, not for
    # a call that may close them later
    until(lambda: not _open_backends(pids), timeout=30,
          what=f"backends {pids} of the database thread to end")
