"""Failing fast and recovering (issue 19.3): the real control plane (gunicorn asgi over TLS)
with Redis, Postgres or only the audit database down answers 503 with the JSON error at
once, comes back by itself when the service does, and never does an audited change
unrecorded.

Each test runs its control plane against daemons of its own (a scratch Redis; a scratch
Postgres holding a copy of the test databases), so stopping them disturbs no other test.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis
from cmdop_server import audit
from cmdop_server.identity.models import User
from cmdop_server.redis_client import ASYNC_POOL_SIZE
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

from tests.server_sessions.helpers import keyed_workspace
from tests.support.control_plane import ApiError, ControlPlane, UserApi, until
from tests.support.services import PostgresServer, RedisServer

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

# What "fast" tells apart: redis-py's default retries took about 3 s per refused request;
# failing fast takes milliseconds. The bound leaves a loaded test machine room and still
# fails a client that retries with backoff. Each call is refused ROUNDS times and its median
# is held to it: a slow refusal is slow every time, a loaded machine stalls one call now and
# then.
FAST = 1.5
ROUNDS = 3
DATABASES = ("test_cmdop", "test_cmdop_audit")


@pytest.fixture
def site():
    """A workspace with an API key and an enrolled machine, in the test databases."""
    return keyed_workspace("failfast", "Fail fast")


def user_api(cp: ControlPlane, site: dict) -> UserApi:
    return UserApi(cp.url, cp.pki.ca, site["key"], site["slug"])


def agent_api(cp: ControlPlane, site: dict) -> UserApi:
    agent = UserApi(cp.url, cp.pki.ca, site["machine"]["credential"], "")
    agent.base = "/api/agent/v1"
    return agent


def refusal(call) -> tuple[int, dict, float]:
    """(status, body, seconds) of a call expected to be refused."""
    started = time.monotonic()
    try:
        call()
    except ApiError as exc:
        return exc.status, exc.body, time.monotonic() - started
    raise AssertionError("the call succeeded with its backing service down")


def assert_unavailable(*calls) -> None:
    """Each of ``calls``, in turn ROUNDS times, is refused 503 unavailable, fast."""
    took: dict = {call: [] for call in calls}
    for _ in range(ROUNDS):
        for call in calls:
            status, body, seconds = refusal(call)
            assert (status, body["error"]) == (503, "unavailable"), body
            took[call].append(seconds)
    for seconds in took.values():
        assert sorted(seconds)[ROUNDS // 2] < FAST, f"refused after {seconds} s"


def succeeds(call) -> bool:
    try:
        call()
    except ApiError as exc:
        if exc.status != 503:
            raise
        return False
    return True


def copy_of_test_databases() -> PostgresServer:
    """A started scratch Postgres holding what the test databases hold now."""
    source = settings.DATABASES["default"]
    pg = PostgresServer().__enter__()
    try:
        for name in DATABASES:
            dump = subprocess.run(
                [str(pg.bindir / "pg_dump"), "--no-owner", "--no-privileges", "-h",
                 source["HOST"], "-p", str(source["PORT"]), "-U", source["USER"], name],
                capture_output=True, text=True, timeout=120, check=True).stdout
            pg.psql(f"CREATE DATABASE {name}")
            pg.psql(dump, dbname=name)
    except BaseException:
        pg.stop()
        raise
    return pg


@pytest.fixture
def own_redis():
    with RedisServer() as redis:
        yield redis


def test_redis_down_refuses_fast_and_recovers(own_redis, site, tls_pki, django_db_setup,
                                              django_db_modify_db_settings, tmp_path):
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log",
                      env={"CMDOP_TEST_REDIS_PORT": str(own_redis.port)}) as cp:
        user, agent = user_api(cp, site), agent_api(cp, site)
        # every session operation is rate-limited in Redis first; a poll reads its queue
        open_session = lambda: user.open_session(site["machine"]["machine_id"])  # noqa: E731
        poll = lambda: agent.call("GET", "/work?wait=0")  # noqa: E731
        open_session()
        poll()
        own_redis.kill()
        assert_unavailable(open_session, poll)
        own_redis.start()  # same port, empty: as after a crash
        until(lambda: succeeds(open_session), timeout=30, what="the user API back")
        until(lambda: succeeds(poll), timeout=30, what="the agent API back")
        user.close()
        agent.close()
    assert "Traceback" not in cp.log()


def _worker_connections(server: RedisServer) -> int:
    """Connections to ``server`` other than the one asking."""
    with redis.Redis(host=server.host, port=server.port) as asking:
        return sum(c["cmd"] != "client|list" for c in asking.client_list())


def test_each_worker_opens_its_redis_connections_before_it_serves(own_redis, tls_pki,
                                                                  tmp_path):
    """A worker that starts cold (the service restarted, every agent polling again at once)
    no longer meets the wave with all its Redis connections still to open: its start opens
    its whole pool, before any request."""
    workers = 2
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log", workers=workers,
                      env={"CMDOP_TEST_REDIS_PORT": str(own_redis.port)}) as cp:
        until(lambda: _worker_connections(own_redis) == workers * ASYNC_POOL_SIZE,
              timeout=30, what=f"{workers} x {ASYNC_POOL_SIZE} warm Redis connections "
                               f"(now {_worker_connections(own_redis)})")
    assert "Traceback" not in cp.log()


def test_a_worker_starting_while_redis_is_down_serves_and_refuses_fast(
        own_redis, site, tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path):
    own_redis.kill()
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log",
                      env={"CMDOP_TEST_REDIS_PORT": str(own_redis.port)}) as cp:
        agent = agent_api(cp, site)
        poll = lambda: agent.call("GET", "/work?wait=0")  # noqa: E731
        assert_unavailable(poll)
        own_redis.start()
        until(lambda: succeeds(poll), timeout=30, what="the agent API back")
        agent.close()
    assert "Traceback" not in cp.log()


# Connections kept between requests, as deployed, by the pool or by Django
# (CONN_MAX_AGE): the ones the crash broke must be replaced, not reused. The pool would let
# a request wait POOL_TIMEOUT for a connection while the server is up and all are busy: far
# longer than FAST here, so a request that waits it out with the server down fails the test.
POOLED = {"CMDOP_TEST_DB_POOL_MAX_SIZE": "4", "CMDOP_TEST_DB_POOL_TIMEOUT": "10"}


@pytest.mark.parametrize("kept", [POOLED, {"CMDOP_TEST_CONN_MAX_AGE": "60"}],
                         ids=["pool", "persistent"])
def test_postgres_down_refuses_fast_and_recovers(kept, site, tls_pki, django_db_setup,
                                                 django_db_modify_db_settings, tmp_path):
    pg = copy_of_test_databases()
    try:
        env = {"CMDOP_TEST_PG_PORT": str(pg.port), **kept}
        with ControlPlane(tls_pki, tmp_path / "gunicorn.log", env=env) as cp:
            user, agent = user_api(cp, site), agent_api(cp, site)
            machines = lambda: user.call("GET", "/machines")  # noqa: E731
            heartbeat = lambda: agent.call(  # noqa: E731
                "POST", "/heartbeat", {"version": "0.1.0", "boot_id": "b1"})
            poll = lambda: agent.call("GET", "/work?wait=0")  # noqa: E731
            for call in (machines, heartbeat, poll):
                call()
            pg.crash()
            assert_unavailable(machines, heartbeat, poll)
            pg.restart()
            for call, what in ((machines, "user API"), (heartbeat, "heartbeat"),
                               (poll, "poll")):
                until(lambda call=call: succeeds(call), timeout=30, what=f"the {what} back")
            user.close()
            agent.close()
        assert "Traceback" not in cp.log()
    finally:
        pg.stop()


class SlowToConnect:
    """A loopback TCP forwarder to ``port`` whose new connections take ``delay`` seconds to
    reach it, as a busy database host's do (TLS, SCRAM and a forked backend on loaded
    cores); once through, bytes flow as they come, and an end closed on one side is
    closed on the other."""

    def __init__(self, port: int, delay: float) -> None:
        self.target, self.delay = port, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        time.sleep(self.delay)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self.open += [client, upstream]
        ends = {client: upstream, upstream: client}
        try:
            while True:
                for end in select.select(list(ends), [], [])[0]:
                    data = end.recv(65536)
                    if not data:
                        return
                    ends[end].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.sock.close()
        for end in self.open:
            end.close()


def test_a_postgres_restart_costs_no_request(site, tls_pki, django_db_setup,
                                             django_db_modify_db_settings, tmp_path):
    """Postgres back after a restart: every connection the pools kept (the app's and the
    audit database's) is dead, the server takes new ones, each in 0.4 s here (a busy host).
    A request that draws a dead one waits for the pool's new connection instead of
    answering 503 (it did: the failed check counted as a server refusing, and a deployed
    site answered a sign-in with 500 after its Postgres restarted)."""
    pg = copy_of_test_databases()
    slow = SlowToConnect(pg.port, delay=0.4)
    try:
        with ControlPlane(tls_pki, tmp_path / "gunicorn.log",
                          env={"CMDOP_TEST_PG_PORT": str(slow.port), **POOLED}) as cp:
            user, agent = user_api(cp, site), agent_api(cp, site)
            calls = {
                "user API": lambda: user.call("GET", "/machines"),
                "heartbeat": lambda: agent.call("POST", "/heartbeat",
                                                {"version": "0.1.0", "boot_id": "b1"}),
                "poll": lambda: agent.call("GET", "/work?wait=0"),
                "audited change": lambda: user.call("POST", "/join-tokens",
                                                    {"name": "after-restart"}),
            }
            for call in calls.values():  # every pool holds a connection now
                call()
            pg.crash()
            pg.restart()
            for what, call in calls.items():
                try:
                    call()
                except ApiError as exc:
                    raise AssertionError(f"the {what} answered {exc.status} with Postgres "
                                         f"up again: {exc.body}") from None
            user.close()
            agent.close()
        assert "Traceback" not in cp.log()
    finally:
        slow.close()
        pg.stop()


@contextlib.contextmanager
def dropped(port: int) -> Iterator[None]:
    """Every packet to ``port`` on loopback dropped, as a Postgres host gone dark or a
    firewall dropping instead of refusing does: no reset, no answer, kept connections
    included. One iptables rule for this port alone (named after this process), always
    removed."""
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP",
            "-m", "comment", "--comment", f"cmdop-test-dropped-{os.getpid()}"]
    # -w: wait for the xtables lock while a lab's podman changes its own rules
    subprocess.run(["iptables", "-w", "-I", *rule], check=True, capture_output=True,
                   timeout=30)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule], check=True, capture_output=True,
                       timeout=30)


needs_iptables = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None,
    reason="dropping packets takes root and iptables")


@needs_iptables
@pytest.mark.parametrize("kept", [POOLED, {"CMDOP_TEST_CONN_MAX_AGE": "60"}],
                         ids=["pool", "persistent"])
def test_postgres_out_of_reach_refuses_fast_and_recovers(kept, site, tls_pki, django_db_setup,
                                                         django_db_modify_db_settings,
                                                         tmp_path):
    """Postgres silent instead of refusing: the kept connections' next packets and every
    new connection's SYN go unanswered. Without a bound each request waited for TCP's own
    retries (minutes) instead."""
    pg = copy_of_test_databases()
    try:
        env = {"CMDOP_TEST_PG_PORT": str(pg.port), **kept}
        with ControlPlane(tls_pki, tmp_path / "gunicorn.log", env=env) as cp:
            user, agent = user_api(cp, site), agent_api(cp, site)
            machines = lambda: user.call("GET", "/machines")  # noqa: E731
            poll = lambda: agent.call("GET", "/work?wait=0")  # noqa: E731
            for call in (machines, poll):
                call()
            with dropped(pg.port):
                assert_unavailable(machines, poll)
            for call, what in ((machines, "user API"), (poll, "poll")):
                until(lambda call=call: succeeds(call), timeout=30, what=f"the {what} back")
            user.close()
            agent.close()
        assert "Traceback" not in cp.log()
    finally:
        pg.stop()


@pytest.mark.parametrize("kept", [POOLED, {}], ids=["pool", "unpooled"])
def test_audit_database_down_refuses_audited_changes(kept, site, tls_pki, django_db_setup,
                                                     django_db_modify_db_settings, tmp_path):
    pg = copy_of_test_databases()
    try:
        with ControlPlane(tls_pki, tmp_path / "gunicorn.log",
                          env={"CMDOP_TEST_PG_PORT": str(pg.port), **kept}) as cp:
            user = user_api(cp, site)
            create = lambda name: user.call("POST", "/join-tokens", {"name": name})  # noqa: E731

            def tokens() -> int:
                return int(pg.psql("SELECT count(*) FROM machines_jointoken",
                                   dbname=DATABASES[0]))

            create("before")  # the worker's first request pays for its warm-up
            pg.psql("ALTER DATABASE test_cmdop_audit WITH ALLOW_CONNECTIONS false; "
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = 'test_cmdop_audit'")
            before = tokens()
            assert_unavailable(lambda: create("unaudited"))
            assert tokens() == before  # not done, since it could not be recorded
            # reads need no audit row
            assert user.call("GET", "/machines") is not None
            pg.psql("ALTER DATABASE test_cmdop_audit WITH ALLOW_CONNECTIONS true")
            until(lambda: succeeds(lambda: create("audited")), timeout=30,
                  what="audited changes back")
            assert tokens() == before + 1
            # every join token there is has its audit row, and no more
            recorded = pg.psql("SELECT count(*) FROM audit_auditevent "
                               "WHERE event = 'machine.join_token.create'", dbname=DATABASES[1])
            assert int(recorded) == tokens()
            user.close()
    finally:
        pg.stop()


def end_audit_connection() -> None:
    """Terminate the server end of this thread's audit connection, as a restart of the
    audit database would."""
    pid = connections["audit"].connection.info.backend_pid
    db = settings.DATABASES["audit"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                         dbname="postgres", autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_change_is_not_committed_when_its_audit_row_cannot_be():
    """The audit database lost after the row was written, before it committed. The old
    order (audit transaction around the app's) committed the change first and then failed
    to commit the row: a change without its row."""
    with pytest.raises((OperationalError, InterfaceError)), audit.action():
        user = User.objects.create_user("lost-at-commit")
        audit.record("test.ordering", user=user)
        end_audit_connection()
    connections["audit"].close()
    assert not User.objects.filter(username="lost-at-commit").exists()


def test_a_change_whose_audit_row_cannot_be_written_is_rolled_back():
    connections["audit"].ensure_connection()
    end_audit_connection()
    with pytest.raises((OperationalError, InterfaceError)), audit.action():
        user = User.objects.create_user("never-recorded")
        audit.record("test.ordering", user=user)
    connections["audit"].close()
    assert not User.objects.filter(username="never-recorded").exists()
