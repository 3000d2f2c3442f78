"""A deployed site (a site folder ``deploy`` ran for, e.g. the demo's on lab hosts) as the
benches reach it from this machine: through its control-plane host's nginx by address (the
site's name resolves only inside the lab; TLS and Host still use the name), with an API key
of the site's Owner issued on that host for the run and revoked after it, and the Owner's
sign-in on the login page. Nothing is started or stopped here: the site must be up.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmdop_install import manage  # noqa: E402
from cmdop_install.runner import read_facts  # noqa: E402
from cmdop_install.sitedir import SiteDir  # noqa: E402

from tests.support.control_plane import SessionOutput, UserApi  # noqa: E402
from tests.support.site_web import SiteWeb, patiently  # noqa: E402
from tests.support.websocket import TerminalSocket  # noqa: E402


@dataclass
class Deployed:
    site: SiteDir
    web: SiteWeb
    key: str
    machine: dict  # the first online machine (or the one asked for)

    @property
    def ca(self) -> Path:
        return self.web.ca

    def api(self) -> UserApi:
        """The user API on one keep-alive connection (as a CLI holds it)."""
        return UserApi(self.web.origin, self.ca, self.key, self.web.workspace,
                       connect_to=self.web.address)

    def open_session(self, cols: int = 80, rows: int = 24) -> tuple[str, SessionOutput]:
        """A PTY session on the machine, once its agent has opened it."""
        api = self.api()
        sid = api.open_session(self.machine["machine_id"], cols, rows)
        deadline = time.monotonic() + 60
        while True:
            mine = [s for s in api.call("GET", "/sessions") if s["session_id"] == sid]
            if mine and mine[0]["status"] == "connected":
                return sid, SessionOutput(self.api(), sid)
            if time.monotonic() > deadline:
                raise SystemExit(f"session {sid} did not connect in 60 s")
            time.sleep(0.25)

    def attach(self, sid: str, cookie: tuple[str, str]) -> TerminalSocket:
        return TerminalSocket(self.web.terminal_url(sid), self.ca, cookie,
                              origin=self.web.origin, connect_to=(self.web.address, 443))


@contextlib.contextmanager
def deployed(site_dir: Path, machine: str | None = None) -> Iterator[Deployed]:
    site = SiteDir.load(site_dir)
    cp = site.inventory.groups["control_plane"][0]
    command = manage.api_key_command(site.name, "bench")
    issued = read_facts(site.inventory.pyinfra_groups(), {"key": command}, limit=[cp.name])
    key_id, key = manage.parse_api_key(issued.hosts[cp.name].facts.get("key", ""))
    web = SiteWeb(cp.address, site.config, site.name, site.path / "pki" / "ca.crt")
    try:
        online = web.wait_online(key)
        found = [m for m in online if machine in (None, m["hostname"], m["machine_id"])]
        if not found:
            raise SystemExit(f"no online machine {machine!r}: "
                             f"{', '.join(m['hostname'] for m in online)}")
        yield Deployed(site, web, key, found[0])
    finally:
        patiently(lambda: web.api(key, "DELETE", f"/api-keys/{key_id}"))
