"""The control plane's release switch on a real gunicorn, without a host: two releases, each a
virtualenv of its own with an app saying which it is, gunicorn started as the unit starts it
(python through the `current` link, ``chdir`` at the link, our asgi worker, no preload); the
link is switched and gunicorn gets a HUP, as ``deploys.ops.server_switch`` does, while a
client keeps asking. The same master then serves the new release, no request fails, and the
workers' working directories name their release (what ``status`` reads)."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
from cmdop_install.deploys.ops import relink

pytestmark = pytest.mark.integration

APP = '''
RELEASE = {release!r}


async def application(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": RELEASE.encode()}})
'''


def _release(root: Path, name: str) -> Path:
    """releases/<name>/venv: its own app module, gunicorn from this interpreter's packages."""
    venv = root / "releases" / name / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "release_app.py").write_text(APP.format(release=name))
    (site / "ours.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _workers(master: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True,
                          check=False).stdout.split()


def _cwds(master: int) -> set[str]:
    """The working directories of ``master``'s children (one leaving meanwhile is skipped)."""
    cwds = set()
    for worker in _workers(master):
        try:
            cwds.add(os.readlink(f"/proc/{worker}/cwd"))
        except FileNotFoundError:
            pass
    return cwds


def _switch(root: Path, release: str) -> None:
    """``current`` -> ``release``, with the deploy's own command line."""
    subprocess.run(["sh", "-c", relink(str(root / "current"), str(root / "releases" / release))],
                   check=True)


def _until(what, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_a_hup_after_the_switch_serves_the_new_release_with_no_failed_request(tmp_path):
    _release(tmp_path, "k1")
    _release(tmp_path, "k2")
    _switch(tmp_path, "k1")
    port = _free_port()
    current = tmp_path / "current/venv"
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(f'bind = "127.0.0.1:{port}"\nworker_class = "asgi"\nworkers = 2\n'
                    f'preload_app = False\nchdir = "{current}"\ngraceful_timeout = 30\n'
                    'control_socket_disable = True\n')
    master = subprocess.Popen([str(current / "bin/python"), "-m", "gunicorn", "--config",
                               str(conf), "release_app:application"], cwd="/",
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers: list[str] = []
    stop = threading.Event()

    def client() -> None:
        for _ in range(20000):  # bounded: a few per millisecond at most
            if stop.is_set():
                return
            try:
                answers.append(_get(port))
            except OSError as e:
                answers.append(f"failed: {e}")

    try:
        _until(lambda: len(_workers(master.pid)) == 2 and _get_or_none(port) == "k1")
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        _until(lambda: len(answers) >= 20)
        _switch(tmp_path, "k2")
        os.kill(master.pid, signal.SIGHUP)
        # the old workers finish and leave; the new ones work in the new release
        _until(lambda: _cwds(master.pid) == {str(tmp_path / "releases/k2/venv")})
        # the client may hold one answer an old worker gave just before it left, not yet
        # appended: every answer after that one is the new release's
        seen = len(answers) + 1
        _until(lambda: len(answers) >= seen + 20)
        stop.set()
        thread.join(timeout=60)
        assert [a for a in answers if a not in ("k1", "k2")] == []
        assert answers[0] == "k1" and set(answers[seen:]) == {"k2"}
        assert master.poll() is None  # the same master: a reload, not a restart
    finally:
        stop.set()
        master.terminate()
        master.wait(timeout=60)


def _get_or_none(port: int) -> str | None:
    try:
        return _get(port)
    except OSError:
        return None


def _unix_get(path: str) -> str:
    conn = http.client.HTTPConnection("localhost", timeout=60)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.settimeout(60)
    try:
        conn.sock.connect(path)
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _master_on(listener: socket.socket, current: Path, conf: Path) -> subprocess.Popen:
    """gunicorn given ``listener`` as systemd gives cmdop-server.socket's: fd 3, LISTEN_FDS=1
    and LISTEN_PID its own pid (a small exec in front of it sets them)."""
    fd = listener.fileno()
    handover = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.executable, [sys.executable, '-m', 'gunicorn', *sys.argv[2:]])")
    return subprocess.Popen(
        [str(current / "bin/python"), "-c", handover, str(fd), "--config", str(conf),
         "release_app:application"],
        cwd="/", pass_fds=(fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_restart_with_the_socket_held_outside_gunicorn_queues_requests(tmp_path):
    """What cmdop-server.socket does for a restart (new units, another gunicorn): the
    listening socket stays open while one master stops and the next starts, so requests wait
    in its backlog instead of being refused; gunicorn leaves the socket's path in place."""
    _release(tmp_path, "k1")
    _release(tmp_path, "k2")
    _switch(tmp_path, "k1")
    path = str(tmp_path / "gunicorn.sock")
    current = tmp_path / "current/venv"
    conf = tmp_path / "gunicorn.conf.py"
    # bind names a path nobody listens on: the socket handed over must win over it
    conf.write_text(f'bind = "unix:{tmp_path / "unused.sock"}"\nworker_class = "asgi"\n'
                    f'workers = 2\npreload_app = False\nchdir = "{current}"\n'
                    'graceful_timeout = 30\ncontrol_socket_disable = True\n')
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(2048)
    answers: list[str] = []
    stop = threading.Event()

    def client() -> None:
        for _ in range(20000):  # bounded: one request at a time
            if stop.is_set():
                return
            try:
                answers.append(_unix_get(path))
            except OSError as e:
                answers.append(f"failed: {e}")

    first = _master_on(listener, current, conf)
    second = None
    thread = threading.Thread(target=client, daemon=True)
    try:
        _until(lambda: len(_workers(first.pid)) == 2)
        thread.start()
        _until(lambda: "k1" in answers)
        _switch(tmp_path, "k2")
        first.terminate()  # systemd's stop: SIGTERM, a graceful shutdown
        first.wait(timeout=60)
        assert os.path.exists(path), "gunicorn removed the socket it was handed"
        served = len(answers)
        second = _master_on(listener, current, conf)
        _until(lambda: "k2" in answers[served:])
        _until(lambda: len(answers) >= answers.index("k2") + 20)
        stop.set()
        thread.join(timeout=60)
        assert [a for a in answers if a not in ("k1", "k2")] == []
        assert not (tmp_path / "unused.sock").exists()
    finally:
        stop.set()
        for master in (first, second):
            if master is not None and master.poll() is None:
                master.terminate()
                master.wait(timeout=60)
        listener.close()
