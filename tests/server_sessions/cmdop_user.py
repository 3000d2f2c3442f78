"""``cmdop`` as a person runs it, in a scratch home, against the real control plane; and the
verification page a person approves a device code on (signed in with their password)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from django.test import Client

from tests.server.helpers import PASSWORD


@dataclass
class CmdopUser:
    home: Path
    server: str
    ca: Path
    api_key: str | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.lower().endswith("_proxy") and not k.startswith("CMDOP_")}
        env.update(HOME=str(self.home), PYTHONUNBUFFERED="1", LC_ALL="C.UTF-8")
        if self.api_key:
            env["CMDOP_API_KEY"] = self.api_key
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cmdop_agent.client.cli", *args]

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, env=self.env(),
                              timeout=timeout, stdin=subprocess.DEVNULL)

    @property
    def dot(self) -> Path:
        return self.home / ".cmdop"

    def login(self, user, *extra: str) -> subprocess.CompletedProcess:
        """``cmdop login``; ``user`` approves the printed code on the verification page."""
        proc = subprocess.Popen(
            self.argv("login", "--server", self.server, "--ca", str(self.ca), *extra),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env())
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        code = re.search(r"enter the code (\S+)", first)
        assert code, first + proc.stderr.read()
        approve_on_page(user, code.group(1))
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, first + out, err)


def approve_on_page(user, user_code: str) -> None:
    """Sign in with the password, enter the code, press Approve — with CSRF checks on."""
    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/login/")
    token = page.cookies["csrftoken"].value
    signed_in = browser.post("/login/", {"username": user.username, "password": PASSWORD,
                                         "csrfmiddlewaretoken": token})
    assert signed_in.status_code == 302, signed_in.content[:300]
    token = browser.cookies["csrftoken"].value
    confirm = browser.post("/device/", {"user_code": user_code, "csrfmiddlewaretoken": token})
    assert confirm.status_code == 200 and b"cmdop-cli" in confirm.content, confirm.content[:300]
    done = browser.post("/device/decide/", {"user_code": user_code, "decision": "approve",
                                            "csrfmiddlewaretoken": token})
    assert done.status_code == 200 and b"Device connected" in done.content


def one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> str:
    """A refusal as cmdop must give it: non-zero, one line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    err = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmdop: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
