"""The browser terminal in Debian's headless Chromium against the real control plane
(gunicorn's asgi worker over TLS) and a real agent: sign in, Connect, type, Ctrl-C, resize,
observe, reopen, lose the terminal with the membership; and a keyboard-only way to Connect.

The terminal draws on a canvas; what it shows is read from xterm.js's own buffer
(``window.cmdopTerminal``), the text a person sees.
"""

from __future__ import annotations

import contextlib
import re

import pytest
from cmdop_server.identity.models import Membership
from django.db import connections

from tests.server.helpers import PASSWORD
from tests.server_sessions.helpers import add_member
from tests.support.control_plane import until

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREEN = """() => { const b = window.cmdopTerminal.buffer.active, lines = [];
  for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
  return lines.join("\\n"); }"""

# (is the foreground a palette colour, which) of the first cell of the line starting with it
COLOUR_OF = """(start) => { const b = window.cmdopTerminal.buffer.active;
  for (let i = 0; i < b.length; i++) {
    const line = b.getLine(i);
    if (line.translateToString(true).startsWith(start)) {
      const cell = line.getCell(0);
      return [cell.isFgPalette(), cell.getFgColor()];
    }
  }
  return null; }"""


@pytest.fixture
def browser(monkeypatch):
    """Debian's Chromium (never a downloaded browser)."""
    # playwright's sync API runs an event loop in this thread; Django's DB guard would
    # otherwise refuse the test's own queries made after this point
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
            # queries made while playwright's loop ran got connections of their own
            # (Django keys them by context, not thread); the test DB can only be dropped
            # once they are closed
            connections.close_all()


@pytest.fixture
def agent(control_plane, real_agent):
    a = real_agent(control_plane)
    a.start()
    return a


def signed_in(browser, agent, user, next_path: str):
    # the control plane's certificate is from the test's throwaway CA
    page = browser.new_context(ignore_https_errors=True,
                               viewport={"width": 1000, "height": 700}).new_page()
    page.goto(f"{agent.server}/login/?next={next_path}")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_url(f"**{next_path}")
    return page


def screen(page) -> str:
    return page.evaluate(SCREEN)


def shows(page, pattern: str, timeout: float = 20) -> str:
    return until(lambda: re.search(pattern, screen(page), re.M) and screen(page),
                 timeout=timeout, what=f"{pattern!r} on the terminal")


def connected(page) -> None:
    page.wait_for_function(
        "() => document.getElementById('state').textContent.startsWith('Connected')",
        timeout=30_000)


def stty_size(page, marker: str) -> tuple[int, int]:
    page.keyboard.type(f"echo {marker}-$(stty size | tr ' ' x)")
    page.keyboard.press("Enter")
    text = shows(page, rf"^{marker}-(\d+)x(\d+)")
    rows, cols = re.search(rf"^{marker}-(\d+)x(\d+)", text, re.M).groups()
    return int(rows), int(cols)


def test_sign_in_connect_type_interrupt_resize_reopen(browser, agent) -> None:
    slug = agent.ws.slug
    page = signed_in(browser, agent, agent.owner, f"/w/{slug}/machines/")
    page.click(f"button[aria-label='Connect to {agent.machine.hostname}']")
    page.wait_for_url(re.compile(r".*/sessions/s_[^/]+/$"))
    connected(page)
    session_url = page.url

    page.keyboard.type("echo $((6*7))")
    page.keyboard.press("Enter")
    shows(page, r"^42$")

    # colours reach the terminal as colours, not as escape codes in the text
    page.keyboard.type("printf '\\033[31mred-%s\\033[0m\\n' $((1+1))")
    page.keyboard.press("Enter")
    shows(page, r"^red-2$")  # the line is the text alone: the escape codes were taken
    assert page.evaluate(COLOUR_OF, "red-2") == [True, 1]  # palette colour 1: red

    page.keyboard.type("sleep 100")
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    page.keyboard.press("Control+C")
    page.keyboard.type("echo after-$((1+1))")
    page.keyboard.press("Enter")
    shows(page, r"^after-2$")  # the prompt came back: sleep was interrupted

    before = stty_size(page, "one")
    page.set_viewport_size({"width": 700, "height": 450})
    until(lambda: page.evaluate("window.cmdopTerminal.cols") != before[1],
          what="the terminal to refit")
    after = stty_size(page, "two")
    assert after != before
    assert after == (page.evaluate("window.cmdopTerminal.rows"),
                     page.evaluate("window.cmdopTerminal.cols"))

    page.close()  # closing the tab and reopening shows the output so far
    again = signed_in(browser, agent, agent.owner, f"/w/{slug}/sessions/")
    again.goto(session_url)
    connected(again)
    shows(again, r"^after-2$")


def test_an_observer_sees_the_output_and_cannot_type(browser, agent) -> None:
    observer = add_member(agent.ws)
    sid, out = agent.open_session()
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": observer.pk, "role": "observer"})
    path = f"/w/{agent.ws.slug}/sessions/{sid}/"
    page = signed_in(browser, agent, observer, path)
    connected(page)
    assert "read-only" in page.inner_text("#state")
    assert page.query_selector("#close-session") is None
    page.click("#terminal")
    page.keyboard.type("echo observer-$((3*3))")
    page.keyboard.press("Enter")
    # the page sends nothing; a hand-made frame is refused by the server (test_terminal_socket)
    agent.api.type(sid, b"echo operator-$((2*2))\r")
    shows(page, r"^operator-4$")
    out.wait_for(b"operator-4")
    assert b"observer-9" not in out.data and b"observer-$" not in out.data


def test_a_removed_member_loses_the_live_terminal(browser, agent) -> None:
    member = add_member(agent.ws)
    sid, _ = agent.open_session()
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": member.pk, "role": "operator"})
    page = signed_in(browser, agent, member, f"/w/{agent.ws.slug}/sessions/{sid}/")
    connected(page)
    Membership.unscoped.filter(workspace=agent.ws, user=member).delete()
    # the socket re-checks every 2 s; the rest is room for Chromium on a loaded machine
    page.wait_for_function(
        "() => !document.getElementById('state').textContent.startsWith('Connected')",
        timeout=30_000)
    assert "session" in page.inner_text("#state").lower()
    assert page.evaluate("window.cmdopTerminal.options.disableStdin")


def test_the_keyboard_reaches_connect_and_inputs_have_labels(browser, agent) -> None:
    page = signed_in(browser, agent, agent.owner, f"/w/{agent.ws.slug}/machines/")
    unlabelled = page.evaluate("""() => [...document.querySelectorAll(
        'input:not([type=hidden]), select, textarea, button')].filter(e =>
        !(e.labels && e.labels.length) && !e.getAttribute('aria-label') &&
        !e.textContent.trim()).map(e => e.outerHTML)""")
    assert unlabelled == []
    target = f"Connect to {agent.machine.hostname}"
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('aria-label')") == target:
            break
    else:
        pytest.fail("Tab never reached the Connect button")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/sessions/s_[^/]+/$"))
    connected(page)
    with contextlib.suppress(Exception):
        page.close()
