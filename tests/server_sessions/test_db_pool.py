"""Pooled Postgres connections (issue 19.1): the real control plane (gunicorn asgi over TLS,
two workers) with Django's psycopg pool, as a deployed site runs it (server.toml
[database] pool_max_size), makes no new Postgres backend per request.

Unpooled, each request's thread opened a connection and closed it at the end: a backend
(fork, authentication, TLS on a site) per request. Pooled, a burst of 500 requests is
served by the few connections of each worker's pools.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import psycopg
import pytest
from cmdop_server.identity import actions
from cmdop_server.identity.models import Membership
from django.conf import settings

from tests.server.helpers import make_user
from tests.server_sessions.helpers import enroll
from tests.support.control_plane import ControlPlane, UserApi

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

WORKERS = 2
POOL_MAX = 4  # per worker and database
CONCURRENCY = 12
REQUESTS = 500
# every connection the pools may ever hold; unpooled, the burst alone made REQUESTS
BOUND = WORKERS * 2 * POOL_MAX


def _stats(sql: str, params: list):
    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                         dbname="postgres") as conn:
        return conn.execute(sql, params).fetchone()[0]


def _names() -> list[str]:
    return [settings.DATABASES["default"]["NAME"], settings.DATABASES["audit"]["NAME"]]


def sessions_made() -> int:
    """Backends ever started on the test databases (Postgres counts them per database)."""
    return int(_stats("SELECT coalesce(sum(sessions), 0) FROM pg_stat_database "
                      "WHERE datname = ANY(%s)", [_names()]))


def backends_now(since: object = None) -> int:
    """Backends open on the test databases now (started after ``since``, if given)."""
    return int(_stats("SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) "
                      "AND (%s::timestamptz IS NULL OR backend_start > %s)",
                      [_names(), since, since]))


@pytest.fixture
def pooled_plane(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path):
    # backends started from here on are the control plane's pools and the test's own; one
    # still open from an earlier test is neither
    started = _stats("SELECT now()", [])
    # 12 clients on 2 x 4 connections: requests wait for one; the suite's 0.3 s pool
    # timeout is shorter than such a wait on a loaded 2-core machine, and would answer 503
    env = {"CMDOP_TEST_DB_POOL_MAX_SIZE": str(POOL_MAX), "CMDOP_TEST_DB_POOL_TIMEOUT": "10"}
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log", workers=WORKERS, env=env) as cp:
        yield cp, started


def test_a_burst_makes_no_backend_per_request(pooled_plane):
    from django.db import connections

    plane, plane_started = pooled_plane
    owner = make_user()
    ws = actions.do_create_workspace(owner, "pooled", "Pooled")
    _, key = actions.do_create_api_key(Membership.objects.in_workspace(ws).get(user=owner), "k")
    machine = enroll(ws, owner)
    # ours are not the control plane's: the audit rows above opened this process's own
    # connection to the audit database too, and it would be counted with the pools'
    connections.close_all()

    def one(i: int) -> int:
        if i % 5 == 4:  # an agent: its long-poll (the dbconn pool lookup)
            api = UserApi(plane.url, plane.pki.ca, machine["credential"], "")
            api.base = "/api/agent/v1"
            call = ("GET", "/work?wait=0", None)
        else:
            api = UserApi(plane.url, plane.pki.ca, key, ws.slug)
            call = [("GET", "/machines", None), ("GET", "/sessions", None),
                    ("POST", "/join-tokens", {"name": f"t{i}"}), ("GET", "/members", None)][i % 5]
        return api.answer_status(*call)

    since = _stats("SELECT now()", [])
    made_before = sessions_made()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], backends_now(plane_started))
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            statuses = list(pool.map(one, range(REQUESTS)))
    finally:
        done.set()
        sampler.join(timeout=10)
    assert set(statuses) == {200}, sorted(set(statuses))
    # Postgres publishes a backend's counters at most once a second; one that ended has
    # published its start, a pooled one still open is counted by pg_stat_activity
    time.sleep(1.5)
    made = sessions_made() - made_before
    alive_new = backends_now(since)
    print(json.dumps({"requests": REQUESTS, "backends_started": max(made, alive_new),
                      "peak_open": peak[0], "bound": BOUND}))
    assert max(made, alive_new) <= BOUND
    assert peak[0] <= BOUND
