"""A small HTTPS client for the control plane's API, as the operator's machine sees it.

It dials a control-plane host's address but verifies the certificate for the site's domain
against the site CA (TLS 1.3 only), so it works before DNS for the domain exists.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import time
from pathlib import Path

from cmdop_install.errors import UserError


class SiteApi:
    def __init__(self, address: str, domain: str, ca_file: Path, key: str, workspace: str):
        self.address, self.domain, self.key = address, domain, key
        self.base = f"/api/v1/workspaces/{workspace}"
        self.ctx = ssl.create_default_context(cafile=str(ca_file))
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 40):
        raw = socket.create_connection((self.address, 443), timeout=timeout)
        conn = http.client.HTTPSConnection(self.domain, 443, timeout=timeout)
        conn.sock = self.ctx.wrap_socket(raw, server_hostname=self.domain)
        headers = {
            "Authorization": f"Bearer {self.key}",
            "Host": self.domain,
            "Content-Type": "application/json",
        }
        conn.request(
            method,
            self.base + path,
            body=json.dumps(body).encode() if body is not None else None,
            headers=headers,
        )
        response = conn.getresponse()
        data = response.read()
        conn.close()
        if response.status >= 400:
            detail = data.decode(errors="replace")[:200]
            raise UserError(f"control plane: {method} {path}: HTTP {response.status} {detail}")
        return json.loads(data) if data else None

    def wait_online(self, hostnames: list[str], timeout: float = 60) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            machines = {m["hostname"]: m for m in self.call("GET", "/machines")}
            if all(machines.get(h, {}).get("online") for h in hostnames):
                return machines
            if time.monotonic() > deadline:
                missing = [h for h in hostnames if not machines.get(h, {}).get("online")]
                raise UserError(f"agents not online after {timeout:.0f}s: {', '.join(missing)}")
            time.sleep(1)

    def _status(self, session: str) -> str | None:
        mine = [s for s in self.call("GET", "/sessions") if s["session_id"] == session]
        return mine[0]["status"] if mine else None

    def run_in_session(
        self, machine_id: str, line: str, expect: bytes, timeout: float = 30
    ) -> bytes:
        """Open a terminal session on a machine, type ``line``, return the output up to the
        first line containing ``expect``; the session is closed either way."""
        session = self.call("POST", "/sessions", {"machine_id": machine_id})["session_id"]
        try:
            deadline = time.monotonic() + timeout
            # a session is readable once it is active (the seed's check 2): until the agent
            # has opened the terminal, the list is where its status shows
            while self._status(session) != "connected":
                if time.monotonic() > deadline:
                    raise UserError("the session did not connect")
                time.sleep(0.2)
            data = base64.b64encode(line.encode() + b"\n").decode()
            self.call("POST", f"/sessions/{session}/input", {"data_b64": data})
            seen, cursor = b"", ""
            while expect not in seen.split(line.encode(), 1)[-1]:
                if time.monotonic() > deadline:
                    raise UserError(f"no {expect.decode()!r} in the session output")
                query = "?wait=5" + (f"&cursor={cursor}" if cursor else "")
                page = self.call("GET", f"/sessions/{session}/output{query}")
                cursor = page["cursor"]
                seen += b"".join(
                    base64.b64decode(i["data_b64"]) for i in page["items"] if i["type"] == "output"
                )
            after = seen.split(line.encode(), 1)[-1]
            return next(ln for ln in after.splitlines() if expect in ln).strip()
        finally:
            self.call("POST", f"/sessions/{session}/close", {})
