"""Rate limits at their exact thresholds, per IP and per principal, across processes."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace

import pytest
from cmdop_server import ratelimit, redis_client
from django.conf import settings
from django.test import Client, override_settings

from tests.server.helpers import PASSWORD, Gunicorn, make_user

pytestmark = pytest.mark.integration

DB = pytest.mark.django_db(databases=["default", "audit"])
MID_WINDOW = 1_800_000_030.0  # 30 s into a one-minute window


@pytest.fixture
def mid_window(monkeypatch):
    """The limiter's clock stopped mid-window, so a test's requests all count in one window
    (instead of sleeping past a boundary that is near)."""
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: MID_WINDOW))


def _device_authorization(client, ip="198.51.100.7"):
    return client.post("/api/v1/oauth/device_authorization", "client_id=cmdop-cli",
                       content_type="application/x-www-form-urlencoded", REMOTE_ADDR=ip)


@DB
def test_auth_limit_is_exactly_10_per_minute_per_ip(mid_window):
    c = Client()
    assert [_device_authorization(c).status_code for _ in range(10)] == [200] * 10
    resp = _device_authorization(c)
    assert resp.status_code == 429
    assert resp.json() == {"error": "rate_limited", "detail": "Too many requests.",
                           "error_description": "Too many requests."}
    assert int(resp["Retry-After"]) == 30  # the rest of the window
    assert _device_authorization(c, ip="198.51.100.8").status_code == 200  # another client


@DB
def test_limit_comes_from_settings(mid_window):
    with override_settings(CMDOP_RATE_LIMITS={"auth": "3/min", "session": "100/min",
                                              "file": "50/min"}):
        codes = [_device_authorization(Client()).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


@DB
def test_login_is_limited_per_principal_across_ips(mid_window):
    user = make_user()
    codes = [Client().post("/login/", {"username": user.username, "password": "wrong"},
                           REMOTE_ADDR=f"203.0.113.{i}").status_code for i in range(11)]
    assert codes == [200] * 10 + [429]  # 200: the form again, with an error
    resp = Client().post("/login/", {"username": user.username, "password": PASSWORD},
                         REMOTE_ADDR="203.0.113.99")
    assert resp.status_code == 429 and int(resp["Retry-After"]) >= 1


@DB
def test_forwarded_for_is_only_trusted_from_proxies(mid_window):
    with override_settings(CMDOP_TRUSTED_PROXIES=["127.0.0.1"]):
        for i in range(12):  # 12 different clients behind the proxy: none limited
            resp = Client().post("/api/v1/oauth/device_authorization", "client_id=cmdop-cli",
                                 content_type="application/x-www-form-urlencoded",
                                 REMOTE_ADDR="127.0.0.1",
                                 HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
            assert resp.status_code == 200
        # an untrusted peer cannot escape its limit by sending X-Forwarded-For
        codes = [Client().post("/api/v1/oauth/device_authorization", "client_id=cmdop-cli",
                               content_type="application/x-www-form-urlencoded",
                               REMOTE_ADDR="198.51.100.50",
                               HTTP_X_FORWARDED_FOR=f"192.0.2.{100 + i}").status_code
                 for i in range(11)]
    assert codes == [200] * 10 + [429]


@DB
def test_failed_bearer_attempts_count_against_the_ip(mid_window):
    from cmdop_server.audit.models import AuditEvent

    codes = [Client().get("/api/v1/me", HTTP_AUTHORIZATION="Bearer cmd_at_nope",
                          REMOTE_ADDR="198.51.100.60").status_code for _ in range(14)]
    assert codes == [401] * 10 + [429] * 4
    assert AuditEvent.objects.filter(event="auth.bearer", success=False).count() == 10


_WORKER = """
import json, sys
import django
django.setup()
from cmdop_server import ratelimit
print("ready", flush=True)
sys.stdin.readline()  # the start signal, sent to both workers once both are ready
now = float(sys.argv[1])
print(json.dumps([ratelimit.hit("auth", "ip:192.0.2.77", now=now).allowed
                  for _ in range(int(sys.argv[2]))]))
"""


def test_exact_threshold_across_two_processes(django_db_modify_db_settings):
    """Two OS processes hammer the same key at the same instant: exactly 10 pass."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.test"}
    now = MID_WINDOW
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(now), "15"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout.readline() == "ready\n"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(sum(r) for r in results) == 10
    assert all(len(r) == 15 for r in results)
    # the next window starts from zero
    assert ratelimit.hit("auth", "ip:192.0.2.77", now=now + 60).allowed


def test_retry_after_is_the_rest_of_the_window(django_db_modify_db_settings):
    for _ in range(10):
        assert ratelimit.hit("auth", "ip:192.0.2.88", now=1_800_000_015.2).allowed
    decision = ratelimit.hit("auth", "ip:192.0.2.88", now=1_800_000_015.2)
    # window [1_800_000_000, 1_800_000_060): 44.8 s left -> 45
    assert decision == ratelimit.Decision(False, 45)


@pytest.mark.django_db(databases=["default", "audit"], transaction=True)
def test_http_threshold_across_two_gunicorn_workers():
    """The workers run on the real clock: a burst that straddled a window boundary (its
    requests counted in two windows) is sent again, into the fresh window."""
    window = ratelimit.parse_rate(settings.CMDOP_RATE_LIMITS["auth"])[1]
    with Gunicorn(workers=2) as server:
        for _ in range(2):
            first = time.time() // window
            codes = _burst(server.url, 14)
            if time.time() // window == first:
                break
            redis_client.client().flushdb()
    assert sorted(codes) == [200] * 10 + [429] * 4


def _burst(url: str, count: int) -> list[int]:
    """``count`` device authorizations at once, released by a barrier; their status codes."""
    barrier = threading.Barrier(count)
    codes: list[int] = []

    def call():
        req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            url + "/api/v1/oauth/device_authorization",
            data=urllib.parse.urlencode({"client_id": "cmdop-cli"}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        barrier.wait()
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                codes.append(resp.status)
        except urllib.error.HTTPError as err:
            codes.append(err.code)
            if err.code == 429:
                assert int(err.headers["Retry-After"]) >= 1

    threads = [threading.Thread(target=call) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return codes


@DB
def test_guessing_device_codes_is_limited_and_audited(mid_window):
    from cmdop_server.audit.models import AuditEvent

    from tests.server.helpers import poll

    codes = [poll(Client(REMOTE_ADDR="198.51.100.70"), f"guess-{i}").status_code
             for i in range(15)]
    assert codes == [400] * 10 + [429] * 5
    # once exhausted, a guess is refused before any lookup: no audit flood
    assert AuditEvent.objects.filter(event="auth.token.issue", success=False,
                                     reason="unknown_device_code").count() == 10
