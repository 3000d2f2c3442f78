"""A deployed site's web front (its nginx on a lab host) as a browser and an API client see it,
from this machine: the site's name for SNI, Host and certificate checks while dialling the
host's address (the name resolves only inside the lab). Used by lab tests and bench scripts.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
from pathlib import Path
from urllib.parse import urlencode

# how long a rate-limited call waits for its window in all (a lab test before may have spent
# this machine's sign-in or session allowance of the minute)
RATE_LIMIT_PATIENCE = 150.0
# nginx's sign-in zone lets one request through every 6 s once its burst is spent (10 a
# minute): a sign-in's two requests need two slots
SIGN_IN_WAIT = 15.0


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited, retry after {retry_after} s")
        self.retry_after = retry_after


def patiently(call, patience: float = RATE_LIMIT_PATIENCE, at_least: float = 0):
    """``call()``, again after each RateLimited's Retry-After (or ``at_least`` seconds: a
    call of several requests must wait for as many of nginx's slots, one per Retry-After),
    for at most ``patience`` s."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return call()
        except RateLimited as limited:
            wait = max(limited.retry_after, at_least)
            if time.monotonic() + wait > deadline:
                raise
            time.sleep(wait)


class SiteWeb:
    def __init__(self, address: str, site: dict, workspace: str, ca: Path) -> None:
        """``site``: the loaded site.toml; ``workspace``: the site's name (the first one)."""
        self.address, self.ca, self.workspace = address, ca, workspace
        self.domain = site["site"]["domain"]
        self.origin = site["site"]["public_url"].rstrip("/")
        self.owner = site["site"]["owner_email"] or f"admin@{self.domain}"
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    def connect(self, timeout: float = 30) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.domain, 443, context=self.ctx, timeout=timeout)
        raw = socket.create_connection((self.address, 443), timeout)
        conn.sock = self.ctx.wrap_socket(raw, server_hostname=self.domain)
        return conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request on its own connection; a 429 raises RateLimited."""
        conn = self.connect()
        try:
            conn.request(method, path, body=body, headers={"Host": self.domain, **(headers or {})})
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        if answer.status == 429:
            raise RateLimited(int(answer.getheader("Retry-After") or 5))
        return answer.status, data

    def api(self, key: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        """The workspace's user API with an API key: (status, the JSON answer)."""
        status, data = self.request(
            method, f"/api/v1/workspaces/{self.workspace}{path}",
            json.dumps(body).encode() if body is not None else None,
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        return status, json.loads(data) if data else None

    def sign_in(self, password: str) -> tuple[str, str]:
        """The site's Owner signs in on the login page as a browser does (CSRF cookie and
        token, Origin and Referer): the session cookie as (name, value). Two requests in
        nginx's sign-in zone: retry it with ``patiently(..., at_least=SIGN_IN_WAIT)``."""
        conn = self.connect()
        try:
            conn.request("GET", "/login/", headers={"Host": self.domain})
            page = conn.getresponse()
            body = page.read().decode()
            if page.status == 429:
                raise RateLimited(int(page.getheader("Retry-After") or 5))
            csrf = re.search(r"csrftoken=([^;]+)", page.getheader("Set-Cookie") or "")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)
            assert page.status == 200 and csrf and token, (page.status, body[:300])
            form = urlencode({"username": self.owner, "password": password, "next": "/",
                              "csrfmiddlewaretoken": token[1]})
            conn.request("POST", "/login/", body=form, headers={
                "Host": self.domain, "Origin": self.origin, "Referer": f"{self.origin}/login/",
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"csrftoken={csrf[1]}"})
            signed = conn.getresponse()
            signed.read()
        finally:
            conn.close()
        if signed.status == 429:
            raise RateLimited(int(signed.getheader("Retry-After") or 5))
        cookie = re.search(r"sessionid=([^;]+)", signed.getheader("Set-Cookie") or "")
        assert signed.status == 302 and cookie, f"sign-in answered {signed.status}"
        return "sessionid", cookie[1]

    def wait_online(self, key: str, timeout: float = 120) -> list[dict]:
        """The workspace's machines once at least one is online (a test before may have
        restarted the agents)."""
        deadline = time.monotonic() + timeout
        while True:
            status, rows = patiently(lambda: self.api(key, "GET", "/machines"))
            assert status == 200, rows
            assert isinstance(rows, list)
            online = [m for m in rows if m["online"]]
            if online:
                return online
            assert time.monotonic() < deadline, f"no machine online in {timeout:.0f} s: {rows}"
            time.sleep(1)

    def terminal_url(self, session_id: str) -> str:
        return f"https://{self.domain}/w/{self.workspace}/sessions/{session_id}/terminal"
