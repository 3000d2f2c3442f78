"""Real Postgres and Redis daemons for tests: scratch dir, free port, stopped by PID.

Two ways to use each, both as context managers::

    # plain: a throwaway server for code that just needs a database
    with PostgresServer() as pg:           # superuser "postgres", trust on socket + loopback
        psycopg.connect(pg.dsn(dbname="postgres"))
        pg.psql("CREATE DATABASE app")      # runs psql as the superuser over the unix socket

    with RedisServer() as r:               # no auth, loopback port + unix socket
        redis.Redis(host=r.host, port=r.port)

    # our rendered configs: pass the files and the settings; "{dir}" and "{port}" in
    # conf_lines / hba / conf are replaced with the server's scratch dir and port
    pg = PostgresServer(
        conf_lines=["include '{dir}/60-cmdop.conf'", "ssl_cert_file = '{dir}/server.crt'"],
        hba=rendered_pg_hba,
        files={"60-cmdop.conf": rendered, "server.crt": crt, "server.key": (key, 0o600)},
    )

Lines in ``conf_lines`` are appended after Debian-free defaults (port, socket dir, no fsync),
so a later line overrides an earlier one exactly as in postgresql.conf. ``files`` values are
``bytes | str`` or ``(content, mode)``; they are written into the scratch dir before start.

Postgres refuses to run as root, so when the tests run as root the daemon (and ``psql``)
run as the ``postgres`` user and the scratch dir belongs to it. Daemons are started
with ``subprocess.Popen`` and stopped by their own PID; nothing system-wide is touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PostgresServer", "RedisServer", "free_port", "pg_bindir", "wait_for_port"]

FileSpec = bytes | str | tuple[bytes | str, int]


def free_port() -> int:
    """A TCP port nobody listens on right now (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path | None:
    """The newest Debian Postgres bin dir (/usr/lib/postgresql/<major>/bin), or None."""
    root = Path("/usr/lib/postgresql")
    majors = sorted((p for p in root.glob("*/bin/postgres")), key=lambda p: int(p.parts[-3]))
    return majors[-1].parent if majors else None


def wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Return once host:port accepts TCP; raise if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def _unprivileged(user: str) -> str | None:
    """Run as ``user`` when we are root and it exists (Debian's packages create it)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    return user


def _write_files(base: Path, files: dict[str, FileSpec], owner: str | None) -> None:
    for name, spec in files.items():
        content, mode = spec if isinstance(spec, tuple) else (spec, 0o644)
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(mode)
        if owner:
            shutil.chown(path, owner, owner)


def _fill(text: str, base: Path, port: int) -> str:
    return text.replace("{dir}", str(base)).replace("{port}", str(port))


class _Daemon:
    """Shared start/stop by PID; subclasses fill in ``_command`` and ``_wait_ready``."""

    stop_signal = signal.SIGTERM

    def __init__(self, run_as: str | None, env: dict[str, str] | None = None) -> None:
        self.run_as = run_as
        self.env = env
        self.port = free_port()
        self.host = "127.0.0.1"
        self.dir = Path(tempfile.mkdtemp(prefix=f"cmdop-{type(self).__name__.lower()}-"))
        if run_as:
            shutil.chown(self.dir, run_as, run_as)
        self.dir.chmod(0o700)
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None

    def path(self, name: str) -> Path:
        return self.dir / name

    def log(self) -> str:
        """The daemon's log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _popen(self, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until stop()
        if self.run_as:
            shutil.chown(self.log_path, self.run_as, self.run_as)
        try:
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=self.run_as,
                cwd=self.dir,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,
            )
        finally:
            log.close()

    def stop(self) -> None:
        """Stop the daemon by its PID and remove the scratch dir."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class PostgresServer(_Daemon):
    """A scratch Postgres cluster (initdb) on a free loopback port and a socket in its dir.

    Plain mode (no arguments): superuser ``postgres``, ``trust`` over the socket and
    loopback. With ``hba`` the given pg_hba.conf replaces that; ``conf_lines`` are appended
    to postgresql.conf; ``files`` are written (owned by the daemon's user) before start.
    """

    stop_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients

    def __init__(
        self,
        conf_lines: list[str] | tuple[str, ...] = (),
        hba: str | None = None,
        files: dict[str, FileSpec] | None = None,
        superuser: str = "postgres",
    ) -> None:
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("no Postgres under /usr/lib/postgresql (apt-get install postgresql)")
        super().__init__("postgres" if os.geteuid() == 0 else None)
        self.superuser = superuser
        self.conf_lines = list(conf_lines)
        self.hba = hba
        self.files = dict(files or {})
        self.data = self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir

    def dsn(self, dbname: str = "postgres", user: str | None = None, **params: str) -> str:
        """A libpq conninfo string for the loopback port (add sslmode=… etc. as params)."""
        parts = {"host": self.host, "port": str(self.port), "dbname": dbname,
                 "user": user or self.superuser, **params}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def _run(self, argv: list[str], input_text: str | None = None) -> str:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PGTZ": "UTC"}
        done = subprocess.run(
            argv, input=input_text, capture_output=True, text=True, user=self.run_as,
            cwd=self.dir, env=env, timeout=60, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed: {done.stderr.strip()}")
        return done.stdout

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket (peer/trust); return stdout."""
        return self._run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.superuser,
             "-d", dbname, "-f", "-"],
            input_text=sql,
        )

    def start(self) -> None:
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.superuser,
                   "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        _write_files(self.dir, self.files, self.run_as)
        base = [
            f"port = {self.port}",
            f"listen_addresses = '{self.host}'",
            f"unix_socket_directories = '{self.dir}'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
        ]
        lines = base + [_fill(line, self.dir, self.port) for line in self.conf_lines]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/support/services.py\n" + "\n".join(lines) + "\n")
        if self.hba is not None:
            (self.data / "pg_hba.conf").write_text(_fill(self.hba, self.dir, self.port))
        self.proc = self._popen([str(self.bindir / "postgres"), "-D", str(self.data)])
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        sock = self.dir / f".s.PGSQL.{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            if sock.exists():
                ready = subprocess.run(
                    [str(self.bindir / "pg_isready"), "-q", "-h", str(self.dir),
                     "-p", str(self.port)], check=False, timeout=10,
                )
                if ready.returncode == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"postgres not ready after {timeout}s:\n{self.log()}")

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT by PID: every backend ends at once, no checkpoint), as
        a crash would. The data dir stays; ``restart()`` brings the cluster back."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(timeout=15)

    def restart(self) -> None:
        """Start the cluster again on the same port and data dir (after ``crash()``)."""
        self.proc = self._popen([str(self.bindir / "postgres"), "-D", str(self.data)])
        self._wait_ready()


class RedisServer(_Daemon):
    """A scratch redis-server (as the ``redis`` user when the tests run as root).

    Plain mode (``conf=None``): loopback ``port`` without auth, a unix socket in its dir,
    no persistence. With ``conf`` (text of a redis.conf, e.g. ours with test overrides
    appended) that config is used as given; ``{dir}``/``{port}`` are filled in and the
    server is ready when ``port`` (TLS or not) accepts TCP. ``env`` adds environment
    variables (e.g. ``OPENSSL_CONF``).
    """

    def __init__(self, conf: str | None = None, files: dict[str, FileSpec] | None = None,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(_unprivileged("redis"), env)
        self.conf = conf
        self.files = dict(files or {})

    @property
    def unix_socket(self) -> Path:
        return self.dir / "redis.sock"

    def start(self) -> None:
        _write_files(self.dir, self.files, self.run_as)
        if self.conf is None:
            text = "\n".join([
                f"port {self.port}",
                f"bind {self.host}",
                f"unixsocket {self.unix_socket}",
                "unixsocketperm 700",
            ])
        else:
            text = _fill(self.conf, self.dir, self.port)
            # a rendered redis.conf rooted in the scratch dir has its ACL LOAD socket in
            # run/redis, which systemd's RuntimeDirectory= makes on a host
            run = self.dir / "run/redis"
            run.mkdir(parents=True, exist_ok=True)
            if self.run_as:
                shutil.chown(run, self.run_as, self.run_as)
        common = [f"dir {self.dir}", 'save ""', "appendonly no", "daemonize no",
                  f"logfile {self.log_path}"]
        conf_path = self.dir / "redis.conf"
        conf_path.write_text(text + "\n" + "\n".join(common) + "\n")
        if self.run_as:
            shutil.chown(conf_path, self.run_as, self.run_as)
        self.proc = self._popen(["redis-server", str(conf_path)])
        try:
            wait_for_port(self.host, self.port, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None

    def kill(self) -> None:
        """kill -9 by PID, as a crash would (no shutdown, no save). The scratch dir stays:
        ``start()`` brings the server back on the same port with the same config and dir
        (and, in plain mode, no data: it persists nothing, like a crash between snapshots)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=15)
