"""Workspaces with members, enrolled machines and sessions in a given state, for tests."""

from __future__ import annotations

import asyncio
import itertools
import json

from cmdop_server.identity.models import Membership, Workspace
from cmdop_server.machines import actions as machine_actions
from cmdop_server.sessions.models import Participant, Session, SessionRole, Status
from django.test import AsyncClient, Client

from tests.server.helpers import make_user

_seq = itertools.count()
JSON = "application/json"


def make_workspace(owner=None, slug: str | None = None):
    owner = owner or make_user()
    ws = Workspace.objects.create(slug=slug or f"ws{next(_seq)}", name="Test")
    Membership(workspace=ws, user=owner, role="owner").save()
    return ws, owner


def add_member(ws, role: str = "member", user=None):
    user = user or make_user()
    Membership(workspace=ws, user=user, role=role).save()
    return user


def owner_membership(ws, user) -> Membership:
    return Membership.objects.in_workspace(ws).select_related("workspace", "user").get(user=user)


def enroll(ws, owner, hostname: str | None = None, client: Client | None = None) -> dict:
    """A machine enrolled through the real endpoint with a fresh join token."""
    _, raw = machine_actions.do_create_join_token(owner_membership(ws, owner), "t", 600)
    client = client or Client()
    resp = post(client, "/api/agent/v1/enroll", {
        "join_token": raw, "hostname": hostname or f"host-{next(_seq)}",
        "os": "Linux 6.1.0 x86_64 (debian 12)", "version": "0.1.0"})
    assert resp.status_code == 201, resp.content
    return resp.json()


def keyed_workspace(slug: str, name: str) -> dict:
    """A workspace with an Owner's API key and one enrolled machine: its slug, the key and
    the enrollment's answer (``machine``)."""
    from cmdop_server.identity import actions

    owner = make_user()
    ws = actions.do_create_workspace(owner, slug, name)
    _, key = actions.do_create_api_key(owner_membership(ws, owner), "k")
    return {"slug": ws.slug, "key": key, "machine": enroll(ws, owner)}


def post(client, path: str, body: dict, token: str | None = None):
    extra = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.post(path, json.dumps(body), content_type=JSON, **extra)


def get(client, path: str, token: str | None = None, **params):
    extra = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.get(path, params, **extra)


def agent_poll(credential: str, cursor: str | None = None, wait: float = 0):
    """GET /work through Django's ASGI handler (the async view, for real)."""
    params = {"wait": wait} | ({"cursor": cursor} if cursor else {})

    async def run():
        return await AsyncClient().get("/api/agent/v1/work", params,
                                       headers={"Authorization": f"Bearer {credential}"})

    return asyncio.run(run())


def make_session(ws, machine, status: Status, operator, observers=()) -> Session:
    s = Session.unscoped.create(workspace=ws, machine=machine, created_by=operator,
                                public_id=f"s_test{next(_seq)}", status=status)
    Participant.objects.create(session=s, user=operator, role=SessionRole.OPERATOR)
    for user in observers:
        Participant.objects.create(session=s, user=user, role=SessionRole.OBSERVER)
    return s
