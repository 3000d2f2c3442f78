"""/metrics (issue 19 item 4): the real control plane (gunicorn asgi, two workers sharing
their numbers) counts requests, parked long-polls, agents, refusals and failures, and serves
them in Prometheus' text format only to the networks of ``[metrics] allowed_sources`` —
through our rendered nginx, a source not listed is refused before the app.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading

import pytest
import redis
from cmdop_server import audit, metrics, redis_client, workqueue
from cmdop_server.identity.models import User
from cmdop_server.machines.models import Machine
from django.db import InterfaceError, OperationalError, connections
from django.test import Client, override_settings

from tests.server.helpers import make_user
from tests.server_sessions.helpers import keyed_workspace
from tests.server_sessions.test_fail_fast import end_audit_connection
from tests.support.control_plane import ApiError, ControlPlane, UserApi, until
from tests.support.nginx import control_plane_behind_nginx
from tests.support.services import RedisServer

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

SERIES = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def parse(text: str) -> dict[str, float]:
    """{'name{labels}': value} of every sample; fails on a line that is not the format."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = SERIES.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def parse_lines(body: bytes) -> list[str]:
    parse(body.decode())
    return body.decode().splitlines()


def scrape(cp: ControlPlane) -> tuple[int, str]:
    conn = http.client.HTTPSConnection(
        "localhost", cp.port, timeout=20,
        context=ssl.create_default_context(cafile=str(cp.pki.ca)))
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def samples(cp: ControlPlane) -> dict[str, float]:
    status, text = scrape(cp)
    assert status == 200, text
    return parse(text)


@pytest.fixture
def site():
    return keyed_workspace("metered", "Metered")


@pytest.fixture
def own_redis():
    with RedisServer() as redis:
        yield redis


@pytest.fixture
def metered(tls_pki, own_redis, django_db_setup, django_db_modify_db_settings, tmp_path):
    """Two workers, /metrics open to this test (127.0.0.1), numbers shared in tmp_path."""
    env = {"CMDOP_TEST_METRICS_SOURCES": "127.0.0.1/32",
           "CMDOP_TEST_METRICS_DIR": str(tmp_path / "metrics"),
           "CMDOP_TEST_REDIS_PORT": str(own_redis.port)}
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log", workers=2, env=env) as cp:
        yield cp


def agent_api(cp: ControlPlane, credential: str) -> UserApi:
    agent = UserApi(cp.url, cp.pki.ca, credential, "")
    agent.base = "/api/agent/v1"
    return agent


def test_requests_of_every_worker_are_counted_and_timed(metered, site):
    user = UserApi(metered.url, metered.pki.ca, site["key"], site["slug"])
    for _ in range(30):  # on fresh connections: both workers serve some
        user.call("GET", "/machines")
        user.close()
    with pytest.raises(ApiError):
        agent_api(metered, "mc_not-a-credential").call("GET", "/work?wait=0")
    ok = 'cmdop_http_requests_total{route="api",status="200"}'
    refused = 'cmdop_http_requests_total{route="agent_poll",status="401"}'
    # each worker publishes its own counts: wait for both kinds, which may be in either
    found = until(lambda: (s := samples(metered)).get(ok) == 30 and refused in s and s,
                  timeout=20, what="30 API requests and the refused poll counted")
    assert found[refused] == 1
    assert found['cmdop_http_request_duration_seconds_count{route="api"}'] == 30
    assert found['cmdop_http_request_duration_seconds_bucket{route="api",le="+Inf"}'] == 30
    assert 0 < found['cmdop_http_request_duration_seconds_sum{route="api"}'] < 30 * 10
    # a refused credential is an authentication failure, by its reason
    assert found['cmdop_auth_failures_total{event="auth.machine",'
                 'reason="unknown_machine_credential"}'] == 1
    assert found['cmdop_auth_failures_recent_by_source{ip="127.0.0.1"}'] == 1


def test_parked_polls_and_agents_online(metered, own_redis, site, monkeypatch):
    agent = agent_api(metered, site["machine"]["credential"])
    agent.call("POST", "/heartbeat", {"version": "0.1.0", "boot_id": "b1"})
    answers: list[dict] = []
    poller = threading.Thread(target=lambda: answers.append(
        agent.call("GET", "/work?wait=20", timeout=60)), daemon=True)
    poller.start()
    parked = until(lambda: (s := samples(metered))["cmdop_agent_polls_parked"] == 1 and s,
                   timeout=20, what="the poll parked")
    assert parked["cmdop_agents_enrolled"] == 1
    assert parked["cmdop_agents_online"] == 1
    assert parked['cmdop_sessions{status="connected"}'] == 0
    machine = Machine.unscoped.get(public_id=site["machine"]["machine_id"])
    # the work goes to the control plane's Redis (this test's own), not the suite's
    monkeypatch.setattr(redis_client, "client", lambda: redis.Redis(port=own_redis.port))
    workqueue.enqueue(machine.pk, "session.input", {"data_b64": "eA=="}, "s_metrics")
    poller.join(timeout=30)
    assert answers and answers[0]["items"]
    until(lambda: samples(metered)["cmdop_agent_polls_parked"] == 0, timeout=20,
          what="the answered poll no longer parked")
    agent.close()


def test_a_poll_whose_agent_went_away_counts_as_499_not_500(metered, site):
    """A parked poll ends when its client closes the connection (an agent stopping, nginx
    dropping it): no answer is sent, and it is counted as nginx counts it, 499; as a 500 it
    fed the 5xx alert with every agent that went away."""
    conn = http.client.HTTPSConnection(
        "localhost", metered.port, timeout=20,
        context=ssl.create_default_context(cafile=str(metered.pki.ca)))
    conn.request("GET", "/api/agent/v1/work?wait=20",
                 headers={"Authorization": f"Bearer {site['machine']['credential']}"})
    until(lambda: samples(metered)["cmdop_agent_polls_parked"] == 1, timeout=20,
          what="the poll parked")
    conn.close()
    gone = 'cmdop_http_requests_total{route="agent_poll",status="499"}'
    found = until(lambda: (s := samples(metered)).get(gone) == 1 and s, timeout=20,
                  what="the abandoned poll counted")
    assert found["cmdop_agent_polls_parked"] == 0
    assert not [k for k in found if k.startswith("cmdop_http_requests_total")
                and 'status="5' in k], found


def test_redis_errors_are_counted_and_metrics_still_served(metered, own_redis, site):
    agent = agent_api(metered, site["machine"]["credential"])
    agent.call("GET", "/work?wait=0")
    own_redis.kill()
    try:
        for _ in range(3):
            with pytest.raises(ApiError) as refused:
                agent.call("GET", "/work?wait=0")
            assert refused.value.status == 503
        until(lambda: samples(metered).get("cmdop_redis_errors_total") == 3, timeout=20,
              what="three Redis errors counted")
    finally:
        own_redis.start()
        agent.close()


def test_pool_usage_is_reported(tls_pki, site, django_db_setup, django_db_modify_db_settings,
                                tmp_path):
    env = {"CMDOP_TEST_METRICS_SOURCES": "127.0.0.1/32", "CMDOP_TEST_DB_POOL_MAX_SIZE": "3"}
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log", workers=1, env=env) as cp:
        user = UserApi(cp.url, cp.pki.ca, site["key"], site["slug"])
        user.call("GET", "/machines")
        user.close()
        found = samples(cp)
    for database in ("default", "audit"):
        # this scrape's own queries hold one of each pool's connections while it answers
        in_use = found[f'cmdop_db_pool_connections{{database="{database}",state="in_use"}}']
        idle = found[f'cmdop_db_pool_connections{{database="{database}",state="idle"}}']
        assert in_use >= 1 and in_use + idle <= 3
        assert found[f'cmdop_db_pool_waiting{{database="{database}"}}'] == 0
        assert found[f'cmdop_db_pool_timeouts_total{{database="{database}"}}'] == 0


def test_metrics_refused_to_a_source_not_allowed(tls_pki, django_db_setup,
                                                 django_db_modify_db_settings, tmp_path):
    with ControlPlane(tls_pki, tmp_path / "gunicorn.log",
                      env={"CMDOP_TEST_METRICS_SOURCES": "10.9.9.0/24"}) as cp:
        status, body = scrape(cp)
    assert status == 403
    assert "cmdop_" not in body


def test_metrics_closed_when_no_source_is_configured():
    # Django's test client comes from 127.0.0.1; the default allows nobody
    assert Client().get("/metrics").status_code == 403
    with override_settings(CMDOP_METRICS_ALLOWED_SOURCES=["127.0.0.0/8"]):
        resp = Client().get("/metrics")
    assert resp.status_code == 200
    assert resp["Content-Type"].startswith("text/plain; version=0.0.4")
    parse(resp.content.decode())


def test_the_addresses_and_accounts_failing_most_lately():
    target, other = make_user(), make_user()
    for _ in range(3):
        audit.record("auth.login", success=False, user=target, ip="192.0.2.7",
                     method="password", reason="bad_password")
    audit.record("auth.login", success=False, user=other, ip="192.0.2.8", method="password",
                 reason="bad_password")
    audit.record("auth.login", user=other, ip="192.0.2.9", method="password")  # succeeded
    with override_settings(CMDOP_METRICS_ALLOWED_SOURCES=["127.0.0.1/32"]):
        found = parse(Client().get("/metrics").content.decode())
    recent = {k: v for k, v in found.items() if "_recent_by_" in k}
    assert recent == {
        'cmdop_auth_failures_recent_by_source{ip="192.0.2.7"}': 3,
        'cmdop_auth_failures_recent_by_source{ip="192.0.2.8"}': 1,
        f'cmdop_auth_failures_recent_by_user{{user_id="{target.pk}"}}': 3,
        f'cmdop_auth_failures_recent_by_user{{user_id="{other.pk}"}}': 1,
    }


def _counted(name: str, **labels: str) -> float:
    counters = metrics.merged()[0]
    return counters.get((name, tuple(sorted(labels.items()))), 0.0)


def test_audit_write_and_commit_failures_are_counted():
    before = {stage: _counted("cmdop_audit_write_failures_total", stage=stage)
              for stage in ("write", "commit")}
    connections["audit"].ensure_connection()
    end_audit_connection()
    with pytest.raises((OperationalError, InterfaceError)), audit.action():
        audit.record("test.metrics", user=User.objects.create_user("never-recorded-m"))
    connections["audit"].close()
    with pytest.raises((OperationalError, InterfaceError)), audit.action():
        audit.record("test.metrics", user=User.objects.create_user("lost-at-commit-m"))
        end_audit_connection()
    connections["audit"].close()
    assert _counted("cmdop_audit_write_failures_total", stage="write") == before["write"] + 1
    assert _counted("cmdop_audit_write_failures_total", stage="commit") == before["commit"] + 1
    # an action that fails on its own is not an audit failure
    with pytest.raises(ValueError), audit.action():
        raise ValueError("the change itself failed")
    assert _counted("cmdop_audit_write_failures_total", stage="commit") == before["commit"] + 1


@pytest.fixture(scope="module")
def web(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path_factory):
    # nginx lets 127.0.0.2 and 127.0.0.3 through; the app only 127.0.0.2
    with control_plane_behind_nginx(
            tls_pki, tmp_path_factory,
            site={"metrics.allowed_sources": "127.0.0.2, 127.0.0.3"},
            env={"CMDOP_TEST_METRICS_SOURCES": "127.0.0.2/32"}) as nginx:
        yield nginx


def test_nginx_serves_metrics_only_to_allowed_sources(web):
    status, headers, body = web.request("GET", "/metrics", source="127.0.0.2")
    assert status == 200, body
    assert "cmdop_agent_polls_parked 0" in parse_lines(body)
    # not listed in site.toml: refused by nginx in the JSON shape, the app never asked
    status, headers, body = web.request("GET", "/metrics", source="127.0.0.4")
    assert status == 403 and b'"forbidden"' in body
    assert "X-Content-Type-Options" not in headers  # the app sends it; nginx adds none
    # a forged X-Forwarded-For does not make a refused client an allowed one
    status, _, _ = web.request("GET", "/metrics", source="127.0.0.4",
                               headers={"X-Forwarded-For": "127.0.0.2"})
    assert status == 403
    # let through by nginx but not by the app: the app's own second check refuses it
    status, headers, body = web.request("GET", "/metrics", source="127.0.0.3")
    assert status == 403 and b'"forbidden"' in body
    assert headers.get("X-Content-Type-Options") == "nosniff"
