"""Access/refresh tokens and API keys: rotation, reuse detection, concurrent refreshes,
revocation on the next request, throttled last_used_at, and no clear secret in any table."""

import io
import json
import threading
from datetime import timedelta

import pyotp
import pytest
from cmdop_server import credentials
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions, totp
from cmdop_server.identity.models import AccessToken, ApiKey, TokenFamily
from cmdop_server.machines import actions as machine_actions
from cmdop_server.permissions import Role
from django.db import connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.server.helpers import bearer, form, make_user, refresh, start_device, tokens_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]


def _ok(client, token):
    return client.get("/api/v1/me", **bearer(token)).status_code


def test_refresh_rotates_and_reuse_revokes_the_family(client):
    user = make_user()
    first = tokens_for(user)
    second = refresh(client, first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["expires_in"] == 3600
    assert _ok(client, second["access_token"]) == 200
    third = refresh(client, second["refresh_token"]).json()

    replay = refresh(client, first["refresh_token"])  # a thief replays an old token
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    family = TokenFamily.objects.get()
    assert family.revoked_reason == "refresh_reuse"
    # every token of the family is dead on the next request
    assert _ok(client, third["access_token"]) == 401
    assert refresh(client, third["refresh_token"]).json()["error"] == "invalid_grant"
    row = AuditEvent.objects.get(event="auth.token.refresh", reason="reuse")
    assert row.success is False and row.user_id == user.pk and row.method == "refresh_token"


def test_refresh_token_expiry_and_wrong_client(client):
    body = tokens_for(make_user())
    assert refresh(client, body["refresh_token"], client_id="cmdop-agent").status_code == 400
    from cmdop_server.identity.models import RefreshToken

    RefreshToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert refresh(client, body["refresh_token"]).json()["error"] == "invalid_grant"


def test_expired_access_token_is_refused(client):
    body = tokens_for(make_user())
    AccessToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    resp = client.get("/api/v1/me", **bearer(body["access_token"]))
    assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
    assert resp["WWW-Authenticate"].startswith("Bearer")


def test_revocation_via_api_takes_effect_on_next_request(client):
    body = tokens_for(make_user())
    family = client.get("/api/v1/tokens", **bearer(body["access_token"])).json()[0]
    resp = client.delete(f"/api/v1/tokens/{family['id']}", **bearer(body["access_token"]))
    assert resp.status_code == 204
    assert _ok(client, body["access_token"]) == 401


def test_an_api_key_cannot_list_or_revoke_its_owners_logins(client):
    """API keys are workspace-scoped; a person's logins belong to no workspace."""
    user = make_user()
    body = tokens_for(user)
    _, owner = _setup_workspace(user)
    _, key = actions.do_create_api_key(owner, "ci")
    family = client.get("/api/v1/tokens", **bearer(body["access_token"])).json()[0]
    listed = client.get("/api/v1/tokens", **bearer(key))
    assert listed.status_code == 403 and "own workspace only" in listed.json()["detail"]
    assert client.delete(f"/api/v1/tokens/{family['id']}", **bearer(key)).status_code == 403
    assert _ok(client, body["access_token"]) == 200  # the login was left alone


def test_revocation_endpoint_rfc7009(client):
    body = tokens_for(make_user())
    assert form(client, "/api/v1/oauth/revoke", token=body["refresh_token"]).status_code == 200
    assert _ok(client, body["access_token"]) == 401
    assert form(client, "/api/v1/oauth/revoke", token="unknown").status_code == 200  # noqa: S106


def test_revocation_via_dashboard(client):
    user = make_user()
    body = tokens_for(user)
    browser = Client()
    browser.force_login(user)
    page = browser.get("/tokens/")
    assert page.status_code == 200 and b"cmdop-cli" in page.content
    family = TokenFamily.objects.get()
    assert browser.post(f"/tokens/{family.pk}/revoke/").status_code == 302
    assert _ok(client, body["access_token"]) == 401


def test_last_used_is_throttled(client):
    body = tokens_for(make_user())
    conn = connections["default"]
    with CaptureQueriesContext(conn) as q:
        for _ in range(5):
            assert _ok(client, body["access_token"]) == 200
    updates = [x for x in q.captured_queries if x["sql"].startswith("UPDATE")]
    assert len(updates) == 1
    assert AccessToken.objects.get().last_used_at is not None
    AccessToken.objects.update(last_used_at=timezone.now() - timedelta(minutes=2))
    with CaptureQueriesContext(conn) as q:
        assert _ok(client, body["access_token"]) == 200
    assert len([x for x in q.captured_queries if x["sql"].startswith("UPDATE")]) == 1


@pytest.mark.django_db(databases=["default", "audit"], transaction=True)
def test_two_concurrent_refreshes_have_one_winner():
    """Both threads present the same refresh token at once: the row lock serialises them,
    exactly one gets new tokens, the other gets invalid_grant and (being indistinguishable
    from a replay) the family is revoked, so the winner's tokens die too."""
    user = make_user()
    body = tokens_for(user)
    barrier = threading.Barrier(2)
    results = []

    def worker():
        barrier.wait()
        try:
            results.append(refresh(Client(), body["refresh_token"]))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 400]
    loser = next(r for r in results if r.status_code == 400)
    assert loser.json()["error"] == "invalid_grant"
    assert TokenFamily.objects.get().revoked_reason == "refresh_reuse"
    winner = next(r for r in results if r.status_code == 200).json()
    assert _ok(Client(), winner["access_token"]) == 401


def _setup_workspace(user, slug="acme"):
    ws = actions.do_create_workspace(user, slug, slug.title())
    from cmdop_server.identity.models import Membership

    return ws, Membership.objects.in_workspace(ws).get(user=user)


def test_api_keys_shown_once_workspace_scoped_and_revocable(client):
    user = make_user()
    body = tokens_for(user)
    ws, owner = _setup_workspace(user)
    _setup_workspace(user, "other")
    created = client.post("/api/v1/workspaces/acme/api-keys", {"name": "ci"},
                          content_type="application/json", **bearer(body["access_token"]))
    assert created.status_code == 201, created.content
    key = created.json()["key"]
    assert key.startswith("cmd_test_") and credentials.looks_like_api_key(key)
    assert created.json()["last_four"] == key[-4:]
    listed = client.get("/api/v1/workspaces/acme/api-keys", **bearer(body["access_token"]))
    assert "key" not in listed.json()[0] and listed.json()[0]["last_four"] == key[-4:]

    assert client.get("/api/v1/workspaces/acme", **bearer(key)).status_code == 200
    # the key belongs to acme only: its owner's other workspace is invisible to it
    assert client.get("/api/v1/workspaces/other", **bearer(key)).status_code == 404
    assert [w["slug"] for w in client.get("/api/v1/workspaces", **bearer(key)).json()] == [
        "acme"]
    assert ApiKey.objects.in_workspace(ws).get().last_used_at is not None

    key_id = created.json()["id"]
    assert client.delete(f"/api/v1/workspaces/acme/api-keys/{key_id}",
                         **bearer(body["access_token"])).status_code == 204
    assert client.get("/api/v1/workspaces/acme", **bearer(key)).status_code == 401
    assert AuditEvent.objects.filter(event="auth.api_key.revoke").count() == 1


def test_removing_a_member_revokes_their_keys(client):
    owner_user, member_user = make_user(), make_user()
    ws, owner = _setup_workspace(owner_user)
    actions.do_add_member(owner, member_user, Role.MEMBER)
    from cmdop_server.identity.models import Membership

    member = Membership.objects.in_workspace(ws).get(user=member_user)
    _, clear = actions.do_create_api_key(member, "laptop")
    assert client.get("/api/v1/workspaces/acme", **bearer(clear)).status_code == 200
    actions.do_remove_member(owner, member)
    assert client.get("/api/v1/workspaces/acme", **bearer(clear)).status_code == 401


def test_no_clear_secret_in_any_table(client):
    """Scan every row of every table of both databases for the secrets handed out."""
    user = make_user()
    start = start_device(client, device_name="scan-host")
    secrets_out = [start["device_code"], start["user_code"].replace("-", ""),
                   start["user_code"]]
    actions.do_decide_device(user, start["user_code"], True, None)
    body = tokens_for(user)
    secrets_out += [body["access_token"], body["refresh_token"]]
    rotated = refresh(client, body["refresh_token"]).json()
    secrets_out += [rotated["access_token"], rotated["refresh_token"]]
    _, owner = _setup_workspace(user)
    _, key = actions.do_create_api_key(owner, "scan")
    secrets_out.append(key)
    client.get("/api/v1/me", **bearer(key))
    client.get("/api/v1/me", **bearer("cmd_at_forged-token-value-xyz"))
    secrets_out.append("forged-token-value-xyz")
    # a join token and the machine credential it is exchanged for
    _, join = machine_actions.do_create_join_token(owner, "scan", 600)
    enrolled = client.post("/api/agent/v1/enroll", json.dumps({
        "join_token": join, "hostname": "scan-machine", "os": "Linux", "version": "0.1.0"}),
        content_type="application/json")
    assert enrolled.status_code == 201, enrolled.content
    secrets_out += [join, enrolled.json()["credential"]]
    # the second factor: its TOTP secret (sealed) and recovery codes (hashed)
    device = totp.do_start_enrolment(user, None)
    totp_secret = totp.secret_of(device)
    codes = totp.do_confirm_enrolment(user, pyotp.TOTP(totp_secret).now(), None)
    assert codes
    secrets_out += [totp_secret, *codes, *(c.replace("-", "") for c in codes)]

    scanned = 0
    for alias in ("default", "audit"):
        with connections[alias].cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            for (table,) in cur.fetchall():
                cur.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')  # noqa: S608
                for (row,) in cur.fetchall():
                    scanned += 1
                    for secret in secrets_out:
                        assert secret not in row, f"clear secret in {alias}.{table}"
                        assert secret[:20] not in row, f"secret prefix in {alias}.{table}"
    assert scanned > 10


def test_api_key_revocation_via_dashboard(client):
    user = make_user()
    _, owner = _setup_workspace(user)
    key, clear = actions.do_create_api_key(owner, "dash")
    browser = Client()
    browser.force_login(user)
    assert b"dash" in browser.get("/tokens/").content
    assert browser.post(f"/keys/acme/{key.pk}/revoke/").status_code == 302
    assert client.get("/api/v1/workspaces/acme", **bearer(clear)).status_code == 401
    other = Client()
    other.force_login(make_user())
    assert other.post(f"/keys/acme/{key.pk}/revoke/").status_code == 404


def test_guests_lose_access_when_guests_are_disabled(client):
    owner_user, guest = make_user(), make_user()
    ws, owner = _setup_workspace(owner_user)
    actions.do_update_workspace(owner, {"guests_enabled": True})
    owner.workspace.refresh_from_db()
    actions.do_add_member(owner, guest, Role.GUEST)
    token = tokens_for(guest)["access_token"]
    assert client.get("/api/v1/workspaces/acme", **bearer(token)).status_code == 200
    actions.do_update_workspace(owner, {"guests_enabled": False})
    assert client.get("/api/v1/workspaces/acme", **bearer(token)).status_code == 403


def test_no_secret_reaches_the_logs(client, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    user = make_user()
    start = start_device(client)
    body = tokens_for(user)
    rotated = refresh(client, body["refresh_token"]).json()
    _, owner = _setup_workspace(user)
    _, key = actions.do_create_api_key(owner, "logs")
    client.get("/api/v1/me", **bearer(key))
    client.get("/api/v1/me", **bearer(body["access_token"]))
    refresh(client, body["refresh_token"])  # reuse: logged as a 400, without the token
    client.post("/api/v1/workspaces", "{bad json", content_type="application/json",
                **bearer(rotated["access_token"]))
    secrets_out = [start["device_code"], start["user_code"], body["access_token"],
                   body["refresh_token"], rotated["access_token"], rotated["refresh_token"], key]
    assert caplog.records, "expected some request logging to scan"
    for secret in secrets_out:
        assert secret not in caplog.text


def test_purge_removes_only_dead_credentials():
    from cmdop_server.identity.models import DeviceAuthorization, RefreshToken
    from django.core.management import call_command

    user = make_user()
    alive = tokens_for(user)
    tokens_for(user)
    long_ago = timezone.now() - timedelta(days=2)
    dead_family = TokenFamily.objects.order_by("-pk").first()
    RefreshToken.objects.filter(family=dead_family).update(expires_at=long_ago)
    start_device(Client())  # pending, not expired: kept
    DeviceAuthorization.objects.filter(status="redeemed").update(expires_at=long_ago)
    out = io.StringIO()
    call_command("purge_credentials", stdout=out)
    assert out.getvalue().startswith("purged 2 device authorizations, 1 token families")
    assert list(TokenFamily.objects.values_list("pk", flat=True)) != []
    assert not TokenFamily.objects.filter(pk=dead_family.pk).exists()
    assert DeviceAuthorization.objects.filter(status="pending").count() == 1
    assert DeviceAuthorization.objects.filter(status="redeemed").count() == 0
    assert Client().get("/api/v1/me", **bearer(alive["access_token"])).status_code == 200
