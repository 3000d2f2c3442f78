"""A control-plane upgrade on a deployed lab site, for tests/lab/test_day2_upgrade.py and
bench/upgrade.py: a new cmdop-server release made from this commit plus migrations, the
real `cmdop-install deploy` bringing it, and requests through the site's nginx meanwhile.
"""

from __future__ import annotations

import http.client
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = "server/src/cmdop_server/identity/migrations"


def release_tree(dest: Path, migrations: dict[str, str]) -> Path:
    """A copy of this commit (``git archive HEAD``) whose identity app has ``migrations``
    (name -> the SQL it runs) added after its newest one, each after the previous."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    # not in git: the xterm.js assets (npm ci) the server wheel carries, and the private uv
    for kept in ("server/node_modules", ".cache"):
        if (ROOT / kept).exists():
            (dest / kept).symlink_to(ROOT / kept)
    folder = dest / MIGRATIONS
    previous = max(p.stem for p in folder.glob("[0-9][0-9][0-9][0-9]_*.py"))
    for name, sql in migrations.items():
        (folder / f"{name}.py").write_text(
            "from django.db import migrations\n\n\n"
            "class Migration(migrations.Migration):\n"
            f"    dependencies = [('identity', '{previous}')]\n"
            f"    operations = [migrations.RunSQL({sql!r}, reverse_sql=migrations.RunSQL.noop)]\n"
        )
        previous = name
    return dest


def previous_checkout(ref: str, dest: Path) -> Path:
    """A checkout of ``ref`` (a git worktree at ``dest``) with its own virtualenv, made by
    that commit's own scripts/bootstrap.sh with the uv this checkout uses: the installer as
    an operator of that release ran it (``dest/.venv/bin/cmdop-install``). Remove it with
    ``remove_checkout``."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(dest), ref],
                   check=True)
    subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=dest, env=uv_on_path(), check=True,
                   timeout=900)
    return dest


def uv_on_path() -> dict[str, str]:
    """This environment with the uv this checkout uses first on PATH: an earlier release's
    bootstrap and installer (which builds its wheels with uv) find it there."""
    uv = shutil.which("uv") or str(ROOT / ".cache/uv/bin/uv")
    return {**os.environ, "PATH": f"{Path(uv).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def remove_checkout(dest: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(dest)],
                   check=False)


def deploy(site_dir: Path, tree: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`cmdop-install deploy` as an operator runs it; with ``tree``, the installer of that
    copy, so the wheels it builds and deploys are that copy's."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree / "installer/src")
    return subprocess.run([sys.executable, "-m", "cmdop_install.cli", "deploy", str(site_dir)],
                          capture_output=True, text=True, env=env, check=False, timeout=1500)


@dataclass
class Load:
    """Requests through nginx from ``threads`` clients, each on a keep-alive connection,
    until ``stop()`` (at most ``limit`` each): every answer other than 200 is a failure."""

    address: str
    domain: str
    ca: Path
    api_key: str
    path: str
    threads: int = 3
    pause: float = 0.05
    limit: int = 20000
    done: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0  # seconds, the longest answer (a switch's pause shows here)
    failed_at: list[float] = field(default_factory=list)  # time.monotonic() of each failure
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._stop.clear()
        self._workers = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        self.finish()

    def finish(self) -> None:
        """Wait for every client to have sent its ``limit`` requests (or been stopped)."""
        for worker in self._workers:
            worker.join(timeout=600)

    def _client(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.check_hostname = False  # the certificate names the site's domain; we dial the IP
        conn: http.client.HTTPSConnection | None = None
        for _ in range(self.limit):
            if self._stop.is_set():
                break
            reused = conn is not None
            started = time.monotonic()
            try:
                conn, outcome = self._get(conn, context)
            except (OSError, http.client.HTTPException) as e:
                conn = None
                outcome = f"{type(e).__name__}: {e}"
                if reused:  # nginx may close an idle keep-alive connection: retry once on a
                    try:  # new one, as every HTTP client does for a GET
                        conn, outcome = self._get(None, context)
                    except (OSError, http.client.HTTPException) as again:
                        outcome = f"{type(again).__name__}: {again}"
            with self._lock:
                self.done += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
                if outcome:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {outcome}")
                    self.failed_at.append(time.monotonic())
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def _get(self, conn: http.client.HTTPSConnection | None, context: ssl.SSLContext
             ) -> tuple[http.client.HTTPSConnection | None, str | None]:
        """One GET: (the connection to reuse, or None; None or what failed)."""
        if conn is None:
            conn = http.client.HTTPSConnection(self.address, 443, context=context, timeout=60)
        try:
            conn.request("GET", self.path, headers={
                "Host": self.domain, "Authorization": f"Bearer {self.api_key}"})
            response = conn.getresponse()
            response.read()
        except BaseException:
            conn.close()
            raise
        outcome = None if response.status == 200 else f"HTTP {response.status}"
        if response.will_close:
            conn.close()
            return None, outcome
        return conn, outcome


def remove_tree(tree: Path) -> None:
    shutil.rmtree(tree, ignore_errors=True)
