"""RFC 8628 as a client sees it: every error code, slow_down arithmetic, expiry, single use,
the 5-guess limit, and the no-JavaScript verification page with CSRF."""

from datetime import timedelta

import pytest
from cmdop_server import credentials
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import actions
from cmdop_server.identity.models import DeviceAuthorization
from django.test import Client
from django.utils import timezone

from tests.server.helpers import (
    DEVICE_GRANT,
    PASSWORD,
    bearer,
    form,
    make_user,
    poll,
    start_device,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]


def _error(resp):
    assert resp["Content-Type"] == "application/json"
    body = resp.json()
    assert body["detail"] and body["error_description"] == body["detail"]
    return resp.status_code, body["error"]


def _age_poll(seconds: float) -> None:
    DeviceAuthorization.objects.update(last_polled_at=timezone.now() - timedelta(seconds=seconds))


def test_start_returns_rfc8628_fields(client):
    body = start_device(client, device_name="web-1")
    assert set(body) == {"device_code", "user_code", "verification_uri",
                         "verification_uri_complete", "expires_in", "interval"}
    assert body["expires_in"] == 900 and body["interval"] == 5
    code = body["user_code"].replace("-", "")
    assert len(code) == 8 and set(code) <= set("BCDFGHJKLMNPQRSTVWXZ")
    assert len(body["device_code"]) >= 43  # 32 random bytes, base64url: 256 bits >= 128
    assert body["verification_uri"].endswith("/device/")
    assert body["verification_uri_complete"].endswith(f"?user_code={code}")
    da = DeviceAuthorization.objects.get()
    assert da.device_code_hash == credentials.sha256_hex(body["device_code"])
    assert da.user_code_hash == credentials.sha256_hex(code)


def test_whole_flow_pending_slow_down_approve_and_single_use(client):
    user = make_user()
    start = start_device(client)
    assert _error(poll(client, start["device_code"])) == (400, "authorization_pending")
    # Polling again at once: slow_down, and the interval grows by 5 s every time.
    assert _error(poll(client, start["device_code"])) == (400, "slow_down")
    assert DeviceAuthorization.objects.get().interval == 10
    assert _error(poll(client, start["device_code"])) == (400, "slow_down")
    assert DeviceAuthorization.objects.get().interval == 15
    _age_poll(14)  # still inside the new 15 s interval
    assert _error(poll(client, start["device_code"])) == (400, "slow_down")
    assert DeviceAuthorization.objects.get().interval == 20
    _age_poll(20)  # exactly the interval: allowed, and the interval stays where it is
    assert _error(poll(client, start["device_code"])) == (400, "authorization_pending")
    assert DeviceAuthorization.objects.get().interval == 20

    assert actions.do_decide_device(user, start["user_code"], True, "127.0.0.1")
    _age_poll(20)
    resp = poll(client, start["device_code"])
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600  # noqa: S105
    assert resp["Cache-Control"] == "no-store"
    assert client.get("/api/v1/me", **bearer(body["access_token"])).status_code == 200
    _age_poll(20)
    assert _error(poll(client, start["device_code"])) == (400, "invalid_grant")


def test_access_denied(client):
    start = start_device(client)
    assert actions.do_decide_device(make_user(), start["user_code"], False, None)
    assert _error(poll(client, start["device_code"])) == (400, "access_denied")


def test_expired_token(client):
    start = start_device(client)
    DeviceAuthorization.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _error(poll(client, start["device_code"])) == (400, "expired_token")
    # an expired code can no longer be approved either
    assert not actions.do_decide_device(make_user(), start["user_code"], True, None)


def test_request_errors(client):
    start = start_device(client)
    assert _error(poll(client, "not-a-device-code")) == (400, "invalid_grant")
    assert _error(poll(client, start["device_code"], client_id="cmdop-agent")) == (
        400, "invalid_grant")
    assert _error(poll(client, start["device_code"], client_id="evil")) == (401, "invalid_client")
    assert _error(form(client, "/api/v1/oauth/token", grant_type="password",
                       client_id="cmdop-cli")) == (400, "unsupported_grant_type")
    assert _error(form(client, "/api/v1/oauth/token", grant_type=DEVICE_GRANT,
                       client_id="cmdop-cli")) == (400, "invalid_request")
    assert _error(form(client, "/api/v1/oauth/token", client_id="cmdop-cli")) == (
        400, "invalid_request")
    assert _error(form(client, "/api/v1/oauth/device_authorization", client_id="cmdop-cli",
                       scope="admin")) == (400, "invalid_scope")
    assert _error(form(client, "/api/v1/oauth/device_authorization", client_id="nope")) == (
        401, "invalid_client")


def test_unknown_form_fields_are_ignored_as_rfc6749_says(client):
    body = start_device(client, color="blue")
    assert body["interval"] == 5


def test_five_wrong_guesses_kill_the_user_code(client):
    user = make_user()
    start = start_device(client)
    code = start["user_code"].replace("-", "")
    alphabet = credentials.USER_CODE_ALPHABET
    wrong = [code[:4] + "".join(alphabet[(alphabet.index(c) + n) % 20] for c in code[4:])
             for n in range(1, 6)]
    for guess in wrong[:4]:
        assert actions.do_find_user_code(user, guess, None) is None
    assert DeviceAuthorization.objects.get().status == "pending"
    assert actions.do_find_user_code(user, wrong[4], None) is None
    assert DeviceAuthorization.objects.get().status == "dead"
    assert not actions.do_decide_device(user, code, True, None)
    assert _error(poll(client, start["device_code"])) == (400, "expired_token")
    assert AuditEvent.objects.filter(event="auth.device.code", success=False).count() >= 5


def test_user_code_is_forgiving_about_case_and_dashes():
    user = make_user()
    start = start_device(Client())
    typed = start["user_code"].lower().replace("-", " - ")
    assert actions.do_find_user_code(user, typed, None) is not None


def test_verification_page_without_javascript():
    user = make_user()
    start = start_device(Client(), device_name="build-host-7")
    browser = Client(enforce_csrf_checks=True)
    page = browser.get(f"/device/?user_code={start['user_code']}")
    assert page.status_code == 302 and page["Location"].startswith("/login/")
    login_page = browser.get("/login/")
    token = login_page.cookies["csrftoken"].value
    resp = browser.post("/login/", {"username": user.username, "password": PASSWORD,
                                    "csrfmiddlewaretoken": token})
    assert resp.status_code == 302
    token = browser.get("/device/").cookies.get("csrftoken", login_page.cookies["csrftoken"]).value
    # without the CSRF token the form is refused
    assert browser.post("/device/", {"user_code": start["user_code"]}).status_code == 403
    confirm = browser.post("/device/", {"user_code": start["user_code"],
                                        "csrfmiddlewaretoken": token})
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "build-host-7" in html and "cmdop-cli" in html and "<script" not in html
    assert browser.post("/device/decide/", {"user_code": start["user_code"],
                                            "decision": "approve"}).status_code == 403
    done = browser.post("/device/decide/", {"user_code": start["user_code"],
                                            "decision": "approve",
                                            "csrfmiddlewaretoken": token})
    assert done.status_code == 200 and b"Device connected" in done.content
    assert DeviceAuthorization.objects.get().status == "approved"
    assert poll(Client(), start["device_code"]).status_code == 200


def test_verification_page_rejects_a_wrong_code():
    user = make_user()
    browser = Client()
    browser.force_login(user)
    resp = browser.post("/device/", {"user_code": "BBBB-BBBB"})
    assert resp.status_code == 400 and b"not valid" in resp.content


def test_polling_at_the_interval_for_a_whole_approval_meets_no_limit(client):
    """A device polling every `interval` seconds until its code expires (180 polls at 5 s,
    more than the auth limit's 10 a minute): slow_down is its only limit, never a 429."""
    start = start_device(client)
    for _ in range(900 // start["interval"]):
        assert _error(poll(client, start["device_code"])) == (400, "authorization_pending")
        _age_poll(start["interval"])
    assert DeviceAuthorization.objects.get().interval == start["interval"]
