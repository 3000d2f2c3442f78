"""The verification page in Debian's headless Chromium: sign in, enter the code, see who is
asking, approve; then the device's next poll gets tokens. JavaScript is switched off."""

import contextlib

import pytest
from cmdop_server.identity.models import DeviceAuthorization
from django.test import Client

from tests.server.helpers import PASSWORD, make_user, poll, start_device

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def chromium_page(monkeypatch):
    """A JavaScript-less page in Debian's Chromium (never a downloaded browser)."""
    # playwright's sync API runs an event loop in this thread; Django's DB guard would
    # otherwise refuse the live server's own test-thread queries made after this point
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser.new_context(java_script_enabled=False).new_page()
        finally:
            browser.close()


def _sign_in(page, url, user):
    page.goto(url)
    assert "/login/" in page.url
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_url("**/device/")


def test_sign_in_enter_code_approve(live_server, monkeypatch):
    user = make_user("alice")
    start = start_device(Client(), device_name="laptop-42")
    with chromium_page(monkeypatch) as page:
        _sign_in(page, f"{live_server.url}/device/", user)
        page.fill("#user_code", start["user_code"].lower())
        page.click("#continue")
        assert "CMDOP command-line client" in page.inner_text("#client")
        assert page.inner_text("#device-name") == "laptop-42"
        page.click("#approve")
        assert page.inner_text("#result") == "Device connected"

    assert DeviceAuthorization.objects.get().status == "approved"
    resp = poll(Client(), start["device_code"])
    assert resp.status_code == 200 and resp.json()["access_token"].startswith("cmd_at_")


def test_deny_and_wrong_code(live_server, monkeypatch):
    user = make_user("bob")
    start = start_device(Client())
    with chromium_page(monkeypatch) as page:
        _sign_in(page, f"{live_server.url}/login/?next=/device/", user)
        page.fill("#user_code", "BBBB-BBBB")
        page.click("#continue")
        assert "not valid" in page.inner_text("#error")
        page.fill("#user_code", start["user_code"])
        page.click("#continue")
        page.click("#deny")
        assert page.inner_text("#result") == "Request denied"

    assert poll(Client(), start["device_code"]).json()["error"] == "access_denied"
