"""The pages under their Content-Security-Policy in Debian's headless Chromium, JavaScript
on: the session page's terminal (xterm.js and our script, files the policy allows, and the
canvas renderer, loaded before the terminal opens so that xterm.js never makes its DOM
renderer, which injects <style> elements) still renders, the sign-in page still signs in with
its stylesheet applied, and the browser reports no policy violation on either. The terminal's
live I/O over its WebSocket is tested in test_terminal_browser.py (Django's live server here
speaks no WebSocket)."""

from __future__ import annotations

import contextlib

import pytest
from cmdop_server.machines.models import Machine
from cmdop_server.sessions.models import Status
from django.test import Client
from playwright.sync_api import expect

from tests.server.helpers import PASSWORD, make_user
from tests.server.test_verification_browser import CHROMIUM_ARGS
from tests.server_sessions.helpers import make_session, make_workspace

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


@contextlib.contextmanager
def chromium(monkeypatch):
    """A page with JavaScript on, and every console message it logs."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # see test_verification_browser
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            yield context, page, console
        finally:
            browser.close()


def _violations(console: list[str]) -> list[str]:
    return [line for line in console if "Content Security Policy" in line]


def test_session_terminal_renders_under_the_policy(live_server, monkeypatch):
    ws, owner = make_workspace()
    machine = Machine.unscoped.create(workspace=ws, hostname="web-1", public_id="m_csp",
                                      enrollment="join_token")
    session = make_session(ws, machine, Status.CONNECTED, owner)
    signed_in = Client()
    signed_in.force_login(owner)
    with chromium(monkeypatch) as (context, page, console):
        context.add_cookies([{"name": "sessionid", "url": live_server.url,
                              "value": signed_in.cookies["sessionid"].value}])
        response = page.goto(f"{live_server.url}/w/{ws.slug}/sessions/{session.public_id}/")
        assert response is not None and response.status == 200
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        expect(page.locator(".xterm")).to_be_visible(timeout=15_000)
        # the canvas renderer draws the screen: no <style> element, nothing refused
        expect(page.locator(".xterm canvas").first).to_be_attached(timeout=15_000)
        assert _violations(console) == []


def test_sign_in_works_under_the_policy(live_server, monkeypatch):
    user = make_user("carol")
    with chromium(monkeypatch) as (_, page, console):
        response = page.goto(f"{live_server.url}/login/?next=/tokens/")
        assert response is not None
        assert "default-src 'none'" in response.headers["content-security-policy"]
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("#sign-in")
        page.wait_for_url("**/tokens/")
        # cmdop.css (a file the policy allows) lays the header out as a flex row
        assert page.eval_on_selector("header", "e => getComputedStyle(e).display") == "flex"
        assert _violations(console) == []
