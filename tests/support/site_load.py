"""A bounded load on a deployed site, from this machine through its nginx, counting failures.

What a rotation must not disturb, all at once: web sign-ins, a signed-in browser session
that keeps browsing, OAuth token refreshes (each refresh rotates the refresh token) with an
API call on each new access token, API-key calls, and an agent session with input and
output (the agent long-polls for the input and streams the output back). Every request
is counted with its latency; a failure is any 5xx, 429, unexpected 401/403, a redirect to
the sign-in page for a signed-in browser, a TLS or connection error, or an echo not seen
within 30 s.

Sign-ins, refreshes and the device flow share the site's per-address limit of 10
authentication requests a minute ([rate_limits] auth_per_minute, fixed minute windows), so
they take turns under a budget of 8 in any 60 s; the agent session's input and output
reads stay well under its 100 operations a minute.
"""

from __future__ import annotations

import base64
import collections
import http.client
import http.cookies
import json
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
AUTH_BUDGET = 8  # authentication requests in any 60 s (the site allows 10 per minute)
AUTH_WINDOW = 61.0
Step = Callable[[], tuple[bool, str]]


@dataclass
class Sample:
    at: float  # time.monotonic() when the request ended
    kind: str
    seconds: float
    ok: bool


@dataclass
class Counts:
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)


class Endpoint:
    """host1's nginx, dialled by address with the site's name as Host and the site CA."""

    def __init__(self, ip: str, domain: str, ca: str) -> None:
        self.ip, self.domain = ip, domain
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.check_hostname = False  # the certificate names the domain; we dial the IP

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = 40) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPSConnection(self.ip, 443, context=self.ctx, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Host": self.domain, **(headers or {})})
            answer = conn.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            conn.close()


class BundleEndpoint(Endpoint):
    """An Endpoint trusting a CA bundle file as it reads now: read anew when the file is
    replaced (a CA rotation's ``pki/ca-bundle.crt``), as a client given that file would."""

    def __init__(self, ip: str, domain: str, bundle: Path) -> None:
        super().__init__(ip, domain, str(bundle))
        self.bundle = bundle
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[int, int]:
        st = os.stat(self.bundle)
        return st.st_ino, st.st_mtime_ns

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                timeout: float = 40) -> tuple[int, list[tuple[str, str]], bytes]:
        stamp = self._stamp()
        if stamp != self.stamp:  # written by os.replace: a new inode
            ctx = ssl.create_default_context(cafile=str(self.bundle))
            ctx.check_hostname = False  # the certificate names the domain; we dial the IP
            self.ctx, self.stamp = ctx, stamp
        return super().request(method, path, body, headers, timeout)


class Browser:
    """A cookie jar on an Endpoint: Django's session and CSRF cookies, nothing else."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.cookies: dict[str, str] = {}

    def call(self, method: str, path: str,
             form: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            csrf = next((v for k, v in self.cookies.items() if k.endswith("csrftoken")), "")
            body = urllib.parse.urlencode({**form, "csrfmiddlewaretoken": csrf}).encode()
            origin = f"https://{self.endpoint.domain}"
            headers.update({"Content-Type": "application/x-www-form-urlencoded",
                            "Origin": origin, "Referer": origin + path})
        status, answer_headers, data = self.endpoint.request(method, path, body, headers)
        for name, value in answer_headers:
            if name.lower() == "set-cookie":
                for key, morsel in http.cookies.SimpleCookie(value).items():
                    self.cookies[key] = morsel.value
        location = next((v for n, v in answer_headers if n.lower() == "location"), "")
        return status, location, data

    def sign_in(self, email: str, password: str) -> tuple[bool, int]:
        self.call("GET", "/login/")
        status, location, _ = self.call("POST", "/login/", {"username": email,
                                                            "password": password})
        return status == 302 and not location.startswith("/login"), status

    def signed_in(self, page: str) -> tuple[bool, int]:
        status, location, _ = self.call("GET", page)
        return status == 200 and not location, status


class SiteLoad:
    """``prepare()``, then ``start()`` and ``stop()`` (returns the counts). Bounded: every
    loop ends on the stop event, and ``max_seconds`` after ``start()`` regardless."""

    def __init__(self, endpoint: Endpoint, workspace: str, email: str, password: str,
                 api_key: str, machine_hostname: str, max_seconds: float = 900) -> None:
        self.endpoint, self.workspace = endpoint, workspace
        self.email, self.password, self.api_key = email, password, api_key
        self.machine_hostname = machine_hostname
        self.max_seconds = max_seconds
        self.deadline = 0.0
        self.counts = Counts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._auth_times: collections.deque[float] = collections.deque()
        self._threads: list[threading.Thread] = []
        self.browser = Browser(endpoint)  # stays signed in throughout
        self.refresh_token = ""
        self.session_id = ""
        self.cursor: str | None = None
        self.ticks = 0
        self.typed: list[str] = []  # the echo markers whose input the site accepted
        self.transcript = ""  # every byte of the session's output read so far

    # -- bookkeeping ----------------------------------------------------------------------
    def _record(self, kind: str, ok: bool, seconds: float, detail: str = "") -> None:
        with self._lock:
            self.counts.requests += 1
            self.counts.by_kind[kind] = self.counts.by_kind.get(kind, 0) + 1
            self.counts.samples.append(Sample(time.monotonic(), kind, seconds, ok))
            if not ok:
                self.counts.failures.append(f"{kind}: {detail}")

    def served(self) -> dict[str, int]:
        """Requests served so far, by kind (a snapshot)."""
        with self._lock:
            return dict(self.counts.by_kind)

    def wait_served(self, after: dict[str, int], kinds: tuple[str, ...],
                    timeout: float = 120) -> bool:
        """Wait until each of ``kinds`` served one more request than in ``after``."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            now = self.served()
            if all(now.get(k, 0) > after.get(k, 0) for k in kinds):
                return True
            self._stop.wait(0.5)
        return False

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def auth_turn(self) -> None:
        """Wait until one more authentication request fits the budget, and take it."""
        while True:
            with self._lock:
                now = time.monotonic()
                while self._auth_times and self._auth_times[0] <= now - AUTH_WINDOW:
                    self._auth_times.popleft()
                if len(self._auth_times) < AUTH_BUDGET:
                    self._auth_times.append(now)
                    return
                wait = self._auth_times[0] + AUTH_WINDOW - now
            time.sleep(wait)

    def _api(self, method: str, path: str, body: dict | None = None,
             token: str | None = None) -> tuple[int, bytes]:
        status, _, data = self.endpoint.request(
            method, path, json.dumps(body).encode() if body is not None else None,
            {"Authorization": f"Bearer {token or self.api_key}",
             "Content-Type": "application/json"})
        return status, data

    def _loop(self, kind: str, step: Step, pause: float, turn: bool) -> None:
        while self._running():
            if turn:
                self.auth_turn()  # waiting for the budget is not the request's latency
            started = time.monotonic()
            try:
                ok, detail = step()
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            self._record(kind, ok, time.monotonic() - started, detail)
            self._stop.wait(pause)

    # -- setup ----------------------------------------------------------------------------
    def _until_not_limited(self, what: str, attempt: Callable[[], tuple[bool, int]]) -> None:
        """Run one preparation request; an earlier test's exhausted auth limit (429) is
        waited out (at most twice), anything else that is not ok fails the preparation."""
        for _ in range(3):
            self.auth_turn()
            ok, status = attempt()
            if ok:
                return
            if status != 429:
                raise AssertionError(f"{what} answered {status}")
            time.sleep(61 - time.time() % 60)  # the next fixed window
        raise AssertionError(f"{what} stayed rate limited")

    def prepare(self) -> None:
        """Sign the browser in, get OAuth tokens by the device flow it approves, and open an
        agent session; raises if any of it fails (before the load counts anything)."""
        self._until_not_limited("the owner's sign-in",
                                lambda: self.browser.sign_in(self.email, self.password))
        start: dict = {}

        def device_authorization() -> tuple[bool, int]:
            status, _, data = self.endpoint.request(
                "POST", "/api/v1/oauth/device_authorization",
                urllib.parse.urlencode({"client_id": "cmdop-cli", "device_name": "load"}).encode(),
                {"Content-Type": "application/x-www-form-urlencoded"})
            if status == 200:
                start.update(json.loads(data))
            return status == 200, status

        self._until_not_limited("device_authorization", device_authorization)
        self.browser.call("GET", "/device/")
        code = {"user_code": start["user_code"]}
        self._until_not_limited("the device page", lambda: self._form("/device/", code))
        self._until_not_limited("the device approval", lambda: self._form(
            "/device/decide/", {**code, "decision": "approve"}))
        tokens = self._token({"grant_type": DEVICE_GRANT, "device_code": start["device_code"],
                              "client_id": "cmdop-cli"})
        self.refresh_token = tokens["refresh_token"]
        self.open_session()

    def open_session(self) -> None:
        """Open the agent session the echoes type into, once the agent has its PTY open."""
        status, data = self._api("GET", f"/api/v1/workspaces/{self.workspace}/machines")
        assert status == 200, data
        machine = next(m for m in json.loads(data) if m["hostname"] == self.machine_hostname)
        status, data = self._api("POST", f"/api/v1/workspaces/{self.workspace}/sessions",
                                 {"machine_id": machine["machine_id"], "cols": 80, "rows": 24})
        assert status == 201, data
        self.session_id = json.loads(data)["session_id"]
        # the load starts once the agent has opened the PTY: until then the session answers
        # 409 "pending" (input too, which the load would count as a failure)
        path = f"/api/v1/workspaces/{self.workspace}/sessions/{self.session_id}"
        until = time.monotonic() + 60
        status, data = self._api("GET", path)
        while status == 409 and b"pending" in data and time.monotonic() < until:
            time.sleep(0.5)
            status, data = self._api("GET", path)
        assert status == 200, data

    def _form(self, path: str, form: dict[str, str]) -> tuple[bool, int]:
        status = self.browser.call("POST", path, form)[0]
        return status == 200, status

    def _token(self, form: dict[str, str]) -> dict:
        status, _, data = self.endpoint.request(
            "POST", "/api/v1/oauth/token", urllib.parse.urlencode(form).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            raise ValueError(f"token endpoint answered {status}: {data[:200]!r}")
        return json.loads(data)

    # -- the steps ------------------------------------------------------------------------
    def browse(self) -> tuple[bool, str]:
        ok, status = self.browser.signed_in(f"/w/{self.workspace}/machines/")
        return ok, f"signed-in page answered {status} (signed out?)"

    def _sign_in(self) -> tuple[bool, str]:
        ok, status = Browser(self.endpoint).sign_in(self.email, self.password)
        return ok, f"sign-in answered {status}"

    def _refresh(self) -> tuple[bool, str]:
        tokens = self._token({"grant_type": "refresh_token", "refresh_token": self.refresh_token,
                              "client_id": "cmdop-cli"})
        self.refresh_token = tokens["refresh_token"]
        status, _ = self._api("GET", "/api/v1/me", token=tokens["access_token"])
        return status == 200, f"/me with a fresh access token answered {status}"

    def _api_key(self) -> tuple[bool, str]:
        status, _ = self._api("GET", f"/api/v1/workspaces/{self.workspace}/machines")
        return status == 200, f"machines answered {status}"

    def echo(self) -> tuple[bool, str]:
        """Type an echo into the agent session and read its output until the marker shows
        (the agent long-polls for the input and posts the output back)."""
        self.ticks += 1
        marker = f"tick{self.ticks}x"
        base = f"/api/v1/workspaces/{self.workspace}/sessions/{self.session_id}"
        # split by quotes so the typed line's own echo does not contain the marker
        data_b64 = base64.b64encode(f"echo {marker[:4]}''{marker[4:]}\n".encode()).decode()
        status, data = self._api("POST", f"{base}/input", {"data_b64": data_b64})
        if status != 202:
            return False, f"input answered {status}: {data[:200]!r}"
        self.typed.append(marker)
        seen, until = "", time.monotonic() + 30
        while marker not in seen and time.monotonic() < until:
            status, text = self._read_output(wait=10)
            if status != 200:
                return False, f"output answered {status}: {text[:200]!r}"
            seen += text
        return marker in seen, f"echo {marker} not seen in 30 s"

    def _read_output(self, wait: int) -> tuple[int, str]:
        """(status, text) of the next page of the session's output after the cursor, waiting
        up to ``wait`` s for some; the text joins the transcript."""
        base = f"/api/v1/workspaces/{self.workspace}/sessions/{self.session_id}"
        query = urllib.parse.urlencode({"wait": wait, **({"cursor": self.cursor}
                                                         if self.cursor else {})})
        status, data = self._api("GET", f"{base}/output?{query}")
        if status != 200:
            return status, data.decode(errors="replace")
        page = json.loads(data)
        self.cursor = page["cursor"]
        text = "".join(base64.b64decode(i["data_b64"]).decode(errors="replace")
                       for i in page["items"] if "data_b64" in i)
        self.transcript += text
        return status, text

    def echoes_lost_and_repeated(self) -> tuple[list[str], list[str]]:
        """Once the load has stopped: the echoes typed whose output never came (lost), and
        every echo whose output came more than once (its input ran twice). Reads what output
        is left first (until a read waits 3 s for nothing)."""
        for _ in range(20):
            status, text = self._read_output(wait=3)
            if status != 200 or not text:
                break
        ticks = [f"tick{n}x" for n in range(1, self.ticks + 1)]
        lost = [m for m in self.typed if m not in self.transcript]
        return lost, [m for m in ticks if self.transcript.count(m) > 1]

    KINDS = ("browse", "sign-in", "refresh", "api-key", "agent-session")

    def start(self) -> None:
        self.deadline = time.monotonic() + self.max_seconds
        self._stop.clear()
        steps: tuple[tuple[str, Step, float, bool], ...] = (
            ("browse", self.browse, 1.0, False), ("sign-in", self._sign_in, 14.0, True),
            ("refresh", self._refresh, 14.0, True), ("api-key", self._api_key, 0.3, False),
            ("agent-session", self.echo, 2.0, False))
        for kind, step, pause, turn in steps:
            thread = threading.Thread(target=self._loop, args=(kind, step, pause, turn),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> Counts:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self._threads = []
        return self.counts


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0.0 when there are none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]
