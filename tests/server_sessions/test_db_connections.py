"""Postgres connections of the real control plane (gunicorn asgi over TLS, persistent
connections as deployed: CONN_MAX_AGE 60) stay within their bound under load.

Under ASGI, Django runs each request's sync code in a thread of its own that ends with the
request; a connection that thread opened, kept for reuse, was never closed and stayed open
until the garbage collector happened to free it (issue 12.5).
"""

from __future__ import annotations

import concurrent.futures
import json

import psycopg
import pytest
from cmdop_server.identity import actions
from cmdop_server.identity.models import Membership
from django.conf import settings

from tests.server.helpers import make_user
from tests.server_sessions.helpers import enroll
from tests.support.control_plane import ApiError, ControlPlane, UserApi, until

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

WORKERS = 2
CONCURRENCY = 12
REQUESTS = 400


def _stats(sql: str, params: list):
    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                         dbname="postgres") as conn:
        return conn.execute(sql, params).fetchone()[0]


def app_connections(since: object) -> int:
    """Open connections to the test databases started after ``since`` (the plane's start):
    one an earlier test left open is not this control plane's."""
    return _stats("SELECT count(*) FROM pg_stat_activity WHERE datname IN (%s, %s) "
                  "AND backend_start > %s",
                  [settings.DATABASES["default"]["NAME"], settings.DATABASES["audit"]["NAME"],
                   since])


@pytest.fixture
def busy_plane(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path):
    started = _stats("SELECT now()", [])
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log", workers=WORKERS,
                      env={"CMDOP_TEST_CONN_MAX_AGE": "60"}) as cp:
        yield cp, started


def test_connections_stay_bounded_after_a_burst(busy_plane):
    from django.db import connections

    plane, plane_started = busy_plane
    owner = make_user()
    ws = actions.do_create_workspace(owner, "conns", "Connections")
    _, key = actions.do_create_api_key(Membership.objects.in_workspace(ws).get(user=owner), "k")
    machine = enroll(ws, owner)
    # ours are not the control plane's: the audit rows above opened this process's own
    # connection to the audit database as well as to the app's
    connections.close_all()

    def one(i: int) -> int:
        api = UserApi(plane.url, plane.pki.ca, key, ws.slug)
        try:
            kind = i % 4
            if kind == 0:
                api.call("GET", "/machines")
            elif kind == 1:
                api.call("GET", "/sessions")
            elif kind == 2:
                api.call("POST", "/join-tokens", {"name": f"t{i}"})
            else:
                agent = UserApi(plane.url, plane.pki.ca, machine["credential"], "")
                agent.base = "/api/agent/v1"
                agent.call("POST", "/heartbeat", {"version": "0.1.0", "boot_id": "b1"})
                agent.close()
            return 200
        except ApiError as exc:
            return exc.status
        finally:
            api.close()

    def poll(i: int) -> int:
        """An agent coming back: its long-poll (the pooled lookup), then a heartbeat."""
        agent = UserApi(plane.url, plane.pki.ca, machine["credential"], "")
        agent.base = "/api/agent/v1"
        return agent.answer_status("GET", "/work?wait=0")

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        statuses = list(pool.map(one, range(REQUESTS)))
        statuses += list(pool.map(poll, range(REQUESTS // 4)))
    assert statuses == [200] * (REQUESTS + REQUESTS // 4), sorted(set(statuses))
    # each request thread's connections end with it; what may stay is each worker's
    # database threads' (dbconn.pool), one per thread and database
    bound = WORKERS * settings.CMDOP_DB_POOL_THREADS * 2
    settled = until(lambda: (n := app_connections(plane_started)) <= bound and [n], timeout=30,
                    what=f"at most {bound} connections")
    print(json.dumps({"connections_after_burst": settled[0], "bound": bound}))
