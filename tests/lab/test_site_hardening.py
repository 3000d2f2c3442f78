"""Issue 12 through the deployed site (host1's real nginx, gunicorn, Postgres): the HTTP
headers a browser gets, the refusals a client gets, the daemons' sandboxes."""

from __future__ import annotations

import http.client
import json
import ssl
from urllib.parse import urlencode

import pytest

from tests.lab.helpers import lab_ssh

pytestmark = pytest.mark.lab

DOMAIN = "cmdop.example.com"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _https(lab, site, method: str, path: str, body: str = "",
           headers: dict | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    ctx = ssl.create_default_context(cafile=str(site.ca))
    ctx.check_hostname = False  # the certificate names the site's domain; we dial the IP
    conn = http.client.HTTPSConnection(lab.host("host1").ip, 443, context=ctx, timeout=15)
    conn.request(method, path, body=body or None, headers={"Host": DOMAIN, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


# --- 6. HTTP hardening -----------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/login/", "/api/v1/openapi.json"])
def test_browser_headers_come_once_from_one_place(lab, site, path) -> None:
    response, _ = _https(lab, site, "GET", path)
    assert response.status == 200
    assert response.headers.get_all("Strict-Transport-Security") == [
        "max-age=31536000; includeSubDomains"]  # once, and no preload on the internal CA
    assert response.headers.get_all("X-Content-Type-Options") == ["nosniff"]
    policies = response.headers.get_all("Content-Security-Policy") or []
    assert len(policies) == 1, policies
    policy = policies[0]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy


def test_the_pages_script_and_styles_are_files_the_policy_allows(lab, site) -> None:
    _, page = _https(lab, site, "GET", "/login/")
    assert b"<script>" not in page and b"style=" not in page
    css, _ = _https(lab, site, "GET", "/assets/cmdop.css")
    assert css.status == 200 and css.getheader("Content-Type").startswith("text/css")
    script, _ = _https(lab, site, "GET", "/assets/session.js")
    assert script.status == 200 and "javascript" in script.getheader("Content-Type")


def test_port_80_redirects_to_the_configured_name_without_a_version(lab, site) -> None:
    for host in (DOMAIN, "evil.invalid"):
        conn = http.client.HTTPConnection(lab.host("host1").ip, 80, timeout=10)
        conn.request("GET", "/device/?user_code=AB", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 301
        assert response.getheader("Location") == f"https://{DOMAIN}/device/?user_code=AB"
        assert response.getheader("Server") == "nginx"


# --- 4. refusals: JSON with Retry-After; device polling is paced by slow_down only ------------
# (first in this file's auth tests: it starts one flow, the flood test below exhausts the limit)

def test_device_polling_through_nginx_meets_slow_down_never_a_429(lab, site) -> None:
    started, body = _https(lab, site, "POST", "/api/v1/oauth/device_authorization",
                           urlencode({"client_id": "cmdop-cli"}), FORM)
    assert started.status == 200, body
    device_code = json.loads(body)["device_code"]
    poll = urlencode({"client_id": "cmdop-cli", "device_code": device_code,
                      "grant_type": "urn:ietf:params:oauth:grant-type:device_code"})
    # 30 polls at once: more than nginx's auth zone ever let through (10/min, burst 10);
    # a client at the advertised interval makes fewer, and meets the same answers
    errors = []
    for _ in range(30):
        answer, body = _https(lab, site, "POST", "/api/v1/oauth/token", poll, FORM)
        assert answer.status == 400, (answer.status, body)
        errors.append(json.loads(body)["error"])
    assert set(errors) <= {"authorization_pending", "slow_down"} and "slow_down" in errors


def test_a_sign_in_flood_is_refused_in_json_with_retry_after(lab, site) -> None:
    answers = [_https(lab, site, "POST", "/api/v1/oauth/device_authorization",
                      urlencode({"client_id": "cmdop-cli"}), FORM) for _ in range(15)]
    refused = [(response, body) for response, body in answers if response.status == 429]
    # the seed's 10 a minute (a fixed window may straddle a minute: then 10 on each side)
    assert refused and len(answers) - len(refused) <= 10 + 1
    for response, body in refused:
        assert response.getheader("Content-Type") == "application/json"
        assert json.loads(body)["error"] == "rate_limited"
        assert int(response.getheader("Retry-After")) >= 1


# --- 7a. the stock daemons' units get our sandbox drop-ins ------------------------------------

@pytest.mark.parametrize(("unit", "at_most"), [("nginx.service", 2.5),
                                               ("postgresql@15-main.service", 1.5)])
def test_stock_daemons_run_sandboxed(lab, site, unit, at_most) -> None:
    out = lab_ssh(lab, "host1", f"sudo systemd-analyze security --no-pager {unit} | tail -1")
    assert f"Overall exposure level for {unit}:" in out.stdout, out.stdout + out.stderr
    score = float(out.stdout.split(f"{unit}:", 1)[1].split()[0])
    print(f"systemd-analyze security {unit}: {score}")  # noqa: T201 - the figure for the report
    assert score <= at_most, out.stdout  # Debian's unit alone: 9.6 UNSAFE
