"""Shared helpers for the control-plane tests: users, workspaces, device-flow tokens."""

from __future__ import annotations

import itertools

from cmdop_server.identity import actions
from cmdop_server.identity.models import User
from django.test import Client

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PASSWORD = "correct horse battery staple"  # noqa: S105 - test users only
_seq = itertools.count()


def make_user(name: str | None = None) -> User:
    return User.objects.create_user(name or f"user{next(_seq)}", password=PASSWORD)


def form(client: Client, path: str, **data):
    from urllib.parse import urlencode

    return client.post(path, urlencode(data), content_type="application/x-www-form-urlencoded")


def start_device(client: Client, client_id: str = "cmdop-cli", **extra) -> dict:
    from urllib.parse import urlencode

    resp = client.post("/api/v1/oauth/device_authorization",
                       urlencode({"client_id": client_id, **extra}),
                       content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 200, resp.content
    return resp.json()


def poll(client: Client, device_code: str, client_id: str = "cmdop-cli"):
    from urllib.parse import urlencode

    return client.post("/api/v1/oauth/token", urlencode(
        {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": client_id}),
        content_type="application/x-www-form-urlencoded")


def refresh(client: Client, refresh_token: str, client_id: str = "cmdop-cli"):
    from urllib.parse import urlencode

    return client.post("/api/v1/oauth/token", urlencode(
        {"grant_type": "refresh_token", "refresh_token": refresh_token,
         "client_id": client_id}), content_type="application/x-www-form-urlencoded")


def tokens_for(user: User, client: Client | None = None) -> dict:
    """Run the device flow to the end for ``user`` (approval via the action) → token body."""
    from cmdop_server.identity.models import DeviceAuthorization
    from django.utils import timezone

    client = client or Client()
    start = start_device(client)
    assert actions.do_decide_device(user, start["user_code"], True, "127.0.0.1")
    DeviceAuthorization.objects.update(last_polled_at=None, created_at=timezone.now())
    resp = poll(client, start["device_code"])
    assert resp.status_code == 200, resp.content
    return resp.json()


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


class Gunicorn:
    """cmdop_server under gunicorn on a free loopback port, stopped by its PID."""

    def __init__(self, workers: int = 2, worker_class: str = "sync", threads: int = 1) -> None:
        self.workers, self.worker_class, self.threads = workers, worker_class, threads
        self.proc = None

    def __enter__(self):
        import os
        import subprocess
        import sys
        from pathlib import Path

        from tests.support.services import free_port, wait_for_port

        self.port = free_port()
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cmdop_server.settings.test"}
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.proc = subprocess.Popen(
            [str(gunicorn), "cmdop_server.wsgi:application", "-b", f"127.0.0.1:{self.port}",
             "-w", str(self.workers), "-k", self.worker_class, "--threads", str(self.threads),
             "--log-level", "warning"],
            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_port("127.0.0.1", self.port, self.proc, timeout=30)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        import subprocess

        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

