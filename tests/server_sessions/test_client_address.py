"""The client's address, end to end as deployed: a client → our rendered nginx (TLS) → the
real control plane under gunicorn's asgi worker on its unix socket → Postgres and Redis.

Several clients are several loopback source addresses (127.0.0.2, .3, …): nginx sees each
as its own ``$remote_addr``. One client exhausting the per-IP sign-in limit leaves another
untouched, a client's own X-Forwarded-For changes nothing, and every audit row written
while serving a request carries the address nginx saw.
"""

from __future__ import annotations

import json
import time

import pytest
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions
from cmdop_server.identity.models import Membership

from tests.server.helpers import make_user
from tests.support.nginx import Nginx, control_plane_behind_nginx

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def web(tls_pki, django_db_setup, django_db_modify_db_settings, tmp_path_factory):
    with control_plane_behind_nginx(tls_pki, tmp_path_factory) as nginx:
        yield nginx


def _whole_window_left() -> None:
    """The limits count per UTC minute: start with at least half of one left, so that all
    the requests of a test (about 15, through nginx and TLS) fall into the same window even
    on a loaded machine."""
    into = time.time() % 60
    if into > 30:
        time.sleep(60 - into + 0.5)


def _start_device(web: Nginx, source: str, forged: str | None = None) -> int:
    headers = FORM | ({"X-Forwarded-For": forged} if forged else {})
    status, _, _ = web.request("POST", "/api/v1/oauth/device_authorization", source,
                               b"client_id=cmdop-cli", headers)
    return status


def test_one_client_exhausting_its_limit_does_not_limit_another(web):
    _whole_window_left()
    assert [_start_device(web, "127.0.0.2") for _ in range(10)] == [200] * 10
    assert _start_device(web, "127.0.0.2") == 429
    # another client, that sent nothing this minute, is not limited
    assert _start_device(web, "127.0.0.3") == 200
    # a forged X-Forwarded-For does not move the exhausted client into another bucket …
    assert _start_device(web, "127.0.0.2", forged="127.0.0.9") == 429
    assert _start_device(web, "127.0.0.2", forged="127.0.0.9, 198.51.100.1") == 429
    # … nor a fresh client into the exhausted one
    assert _start_device(web, "127.0.0.4", forged="127.0.0.2") == 200


def test_failed_bearer_tokens_count_against_their_own_client_only(web):
    _whole_window_left()
    bad = {"Authorization": "Bearer cmd_at_" + "x" * 43}
    codes = [web.request("GET", "/api/v1/me", "127.0.0.5", headers=bad)[0] for _ in range(11)]
    assert codes == [401] * 10 + [429]
    assert _start_device(web, "127.0.0.6") == 200


def test_every_audit_row_carries_the_address_nginx_saw(web):
    owner = make_user()
    ws = actions.do_create_workspace(owner, "addr", "Addresses")
    _, key = actions.do_create_api_key(Membership.objects.in_workspace(ws).get(user=owner), "k")
    first = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    forged = {"X-Forwarded-For": "198.51.100.66"}
    web.request("GET", "/api/v1/me", "127.0.0.7", headers=forged | {"Authorization": "Bearer no"})
    status, _, body = web.request("POST", f"/api/v1/workspaces/{ws.slug}/join-tokens",
                                  "127.0.0.8", json.dumps({"name": "t"}).encode(),
                                  JSON | forged | {"Authorization": f"Bearer {key}"})
    assert status == 201, body
    status, _, body = web.request("POST", "/api/agent/v1/enroll", "127.0.0.9", json.dumps({
        "join_token": json.loads(body)["join_token"], "hostname": "web1", "os": "Linux",
        "version": "0.1.0"}).encode(), JSON | forged)
    assert status == 201, body
    rows = {(row.event, row.success): row.ip
            for row in AuditEvent.objects.filter(id__gt=first).order_by("id")}
    assert rows == {("auth.bearer", False): "127.0.0.7",
                    ("machine.join_token.create", True): "127.0.0.8",
                    ("machine.enroll", True): "127.0.0.9"}
