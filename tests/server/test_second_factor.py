"""TOTP (RFC 6238) for web sign-in: enrolment with a QR code and hashed single-use recovery
codes, the sign-in's second step, replay and wrong codes refused and rate-limited, a
workspace whose owner requires 2FA, device approval behind the second factor, every event
audited. Real Postgres and Redis; pages through Django's client with CSRF checks on."""

from __future__ import annotations

import itertools
import re
import time
from types import SimpleNamespace

import pyotp
import pytest
from cmdop_server import credentials, ratelimit
from cmdop_server.audit.models import AuditEvent
from cmdop_server.identity import totp
from cmdop_server.identity.models import DeviceAuthorization, RecoveryCode, TotpDevice, Workspace
from django.test import Client

from tests.server.helpers import PASSWORD, make_user, start_device

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]
_ips = itertools.count(10)


@pytest.fixture(autouse=True)
def mid_window(monkeypatch):
    """The limiter's clock stopped mid-window: a test's attempts all count in one window."""
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(time=lambda: 1_800_000_030.0))


class Browser:
    """A person's browser with CSRF checks on, from an address of its own."""

    def __init__(self) -> None:
        self.client = Client(enforce_csrf_checks=True, REMOTE_ADDR=f"198.51.100.{next(_ips)}")
        self.client.get("/login/")

    def post(self, path: str, **data):
        data["csrfmiddlewaretoken"] = self.client.cookies["csrftoken"].value
        return self.client.post(path, data)

    def sign_in(self, user):
        return self.post("/login/", username=user.username, password=PASSWORD)

    def signed_in(self) -> bool:
        return self.client.get("/tokens/").status_code == 200


def code_at(secret: str, steps_from_now: int) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * steps_from_now)


def enrol(browser: Browser) -> tuple[str, list[str]]:
    """Through the account page: start, see the QR code, confirm; (secret, recovery codes)."""
    page = browser.post("/account/2fa/", step="start")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<svg" in html and "<script" not in html and "style=" not in html
    secret = re.search(r'<code id="secret">([A-Z2-7]+)</code>', html).group(1)
    done = browser.post("/account/2fa/", step="confirm", code=code_at(secret, -1))
    assert done.status_code == 200, done.content[:300]
    return secret, re.findall(r"<li><code>([A-Z2-7-]+)</code></li>", done.content.decode())


def user_with_2fa() -> tuple[object, str, list[str]]:
    user, browser = make_user(), Browser()
    assert browser.sign_in(user).status_code == 302 and browser.signed_in()
    secret, codes = enrol(browser)
    return user, secret, codes


def test_enrolment_stores_recovery_codes_hashed_and_audits() -> None:
    user, browser = make_user(), Browser()
    browser.sign_in(user)
    page = browser.post("/account/2fa/", step="start")
    secret = re.search(r'<code id="secret">([A-Z2-7]+)</code>', page.content.decode()).group(1)
    wrong = browser.post("/account/2fa/", step="confirm", code="000000")
    assert wrong.status_code == 400 and not totp.has_second_factor(user)
    done = browser.post("/account/2fa/", step="confirm", code=code_at(secret, 0))
    for shown in (page, wrong, done):  # the secret and the codes: in no cache
        assert shown["Cache-Control"] == "no-store"
    codes = re.findall(r"<li><code>([A-Z2-7-]+)</code></li>", done.content.decode())
    assert len(codes) == credentials.RECOVERY_CODES_PER_USER and totp.has_second_factor(user)
    stored = set(RecoveryCode.objects.filter(user=user).values_list("code_hash", flat=True))
    assert stored == {credentials.sha256_hex(c) for c in codes}
    events = set(AuditEvent.objects.filter(user_id=user.pk).values_list("event", "success"))
    assert {("auth.2fa.enrol_start", True), ("auth.2fa.enrol", False),
            ("auth.2fa.enrol", True)} <= events


def test_sign_in_asks_for_the_code_and_refuses_wrong_and_replayed_codes() -> None:
    user, secret, _ = user_with_2fa()
    browser = Browser()
    step_two = browser.sign_in(user)
    assert step_two.status_code == 302 and step_two["Location"] == "/login/2fa/"
    assert not browser.signed_in()  # the password alone does not sign in
    assert browser.post("/login/2fa/", code="123456").status_code == 400
    assert not browser.signed_in()
    # the code confirmed at enrolment cannot be used again
    used = pyotp.TOTP(secret).at(TotpDevice.objects.get(user=user).last_step * 30)
    assert browser.post("/login/2fa/", code=used).status_code == 400
    code = code_at(secret, 0)
    assert browser.post("/login/2fa/", code=code).status_code == 302
    assert browser.signed_in()
    again = Browser()
    again.sign_in(user)
    assert again.post("/login/2fa/", code=code).status_code == 400  # replayed
    assert AuditEvent.objects.filter(event="auth.2fa.verify", success=False,
                                     user_id=user.pk).count() == 3
    assert AuditEvent.objects.filter(event="auth.login", method="password+totp").count() == 1


def test_wrong_codes_are_rate_limited() -> None:
    user, secret, _ = user_with_2fa()
    browser = Browser()
    browser.sign_in(user)
    statuses = [browser.post("/login/2fa/", code="000000").status_code for _ in range(12)]
    # 10 attempts a minute per user: the code confirmed at enrolment was the first
    assert statuses[:9] == [400] * 9
    assert statuses[9:] == [429, 429, 429]
    # while limited, even the right code is refused: the limit is per user, not per session
    other = Browser()
    other.sign_in(user)
    limited = other.post("/login/2fa/", code=code_at(secret, 0))
    assert limited.status_code == 429 and limited["Retry-After"]
    assert not other.signed_in()


def test_recovery_code_works_once() -> None:
    user, _, codes = user_with_2fa()
    first = Browser()
    first.sign_in(user)
    assert first.post("/login/2fa/", code=codes[0].lower()).status_code == 302
    assert first.signed_in()
    second = Browser()
    second.sign_in(user)
    assert second.post("/login/2fa/", code=codes[0]).status_code == 400
    assert not second.signed_in()
    assert RecoveryCode.objects.filter(user=user, used_at__isnull=False).count() == 1
    assert AuditEvent.objects.filter(event="auth.2fa.verify", method="recovery_code",
                                     success=True).count() == 1


def test_enforced_workspace_refuses_sign_in_without_2fa() -> None:
    from tests.server_sessions.helpers import add_member, make_workspace

    owner, owner_secret, _ = user_with_2fa()
    ws, _ = make_workspace(owner=owner)
    member = add_member(ws, "member")
    lax_owner = Browser()
    lax_owner_user = make_user()
    other_ws, _ = make_workspace(owner=lax_owner_user)
    lax_owner.sign_in(lax_owner_user)
    refused = lax_owner.post(f"/account/2fa/workspaces/{other_ws.slug}/", required="on")
    assert refused.status_code == 409 and not Workspace.objects.get(pk=other_ws.pk).require_2fa
    browser = Browser()
    browser.sign_in(owner)
    browser.post("/login/2fa/", code=code_at(owner_secret, 0))
    assert browser.post(f"/account/2fa/workspaces/{ws.slug}/",
                        required="on").status_code == 302
    assert Workspace.objects.get(pk=ws.pk).require_2fa
    assert AuditEvent.objects.filter(event="workspace.2fa_required", workspace_id=ws.pk)
    # the member has no second factor: the password leads to enrolment, not to a session
    person = Browser()
    enrolment = person.sign_in(member)
    assert enrolment["Location"] == "/login/2fa/"
    page = person.client.get("/login/2fa/")
    assert b"requires a second factor" in page.content and b"<svg" in page.content
    assert not person.signed_in()
    secret = totp.secret_of(TotpDevice.objects.get(user=member))
    assert secret.encode() in person.client.get("/login/2fa/").content  # a reload: same key
    assert person.post("/login/2fa/", step="confirm", code="000000").status_code == 400
    assert not person.signed_in()
    done = person.post("/login/2fa/", step="confirm", code=code_at(secret, 0))
    assert done.status_code == 200 and b"recovery-codes" in done.content
    assert done["Cache-Control"] == "no-store" == page["Cache-Control"]
    assert person.signed_in() and totp.has_second_factor(member)


def test_device_approval_needs_the_second_factor() -> None:
    user, secret, _ = user_with_2fa()
    browser = Browser()
    browser.sign_in(user)
    browser.post("/login/2fa/", code=code_at(secret, 0))
    start = start_device(Client())
    confirm = browser.post("/device/", user_code=start["user_code"])
    assert b'name="otp"' in confirm.content
    no_code = browser.post("/device/decide/", user_code=start["user_code"],
                           decision="approve")
    assert no_code.status_code == 400
    assert DeviceAuthorization.objects.get().status == "pending"
    done = browser.post("/device/decide/", user_code=start["user_code"], decision="approve",
                        otp=code_at(secret, 1))
    assert done.status_code == 200 and DeviceAuthorization.objects.get().status == "approved"
    assert AuditEvent.objects.filter(event="auth.2fa.verify", success=True,
                                     data__purpose="device_approve").exists()
