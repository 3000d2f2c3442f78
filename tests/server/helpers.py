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
