"""Bodies of the agent protocol v1 (docs/agent-protocol.md). Unknown fields are ignored
(the protocol's versioning rule), unlike the user API's strict schemas."""

from __future__ import annotations

from typing import Any

from ninja import Schema
from pydantic import ConfigDict, Field

from cmdop_server.textinput import Input


class Lenient(Input):
    model_config = ConfigDict(extra="ignore")


class EnrollIn(Lenient):
    join_token: str | None = Field(default=None, max_length=200)
    hostname: str = Field(max_length=253)
    os: str = Field(default="", max_length=500)
    version: str = Field(max_length=40)
    workspace: str | None = Field(default=None, max_length=63)


class EnrollOut(Schema):
    machine_id: str
    credential: str | None = None
    workspace: str
    heartbeat_interval: int
    poll_timeout: int


class HeartbeatIn(Lenient):
    version: str = Field(max_length=40)
    os: str = Field(default="", max_length=500)
    hostname: str = Field(default="", max_length=253)
    boot_id: str = Field(min_length=1, max_length=64)
    sessions: int = 0


class HeartbeatOut(Schema):
    server_time: str
    heartbeat_interval: int
    # only while a credential handover is open: the agent stores it and uses it from then on
    credential: str | None = None


class WorkItem(Schema):
    id: str
    type: str
    session_id: str | None = None
    created: str
    payload: dict[str, Any]


class WorkOut(Schema):
    items: list[WorkItem]
    cursor: str


class AckIn(Lenient):
    ids: list[str] = Field(max_length=1000)


class AckOut(Schema):
    acked: int


class EventIn(Lenient):
    """One event; which optional fields it carries depends on ``type`` (protocol table)."""

    seq: int = Field(ge=1)
    type: str = Field(max_length=40)
    session_id: str | None = Field(default=None, max_length=40)
    work_id: str | None = Field(default=None, max_length=40)
    data_b64: str | None = None
    stream: str | None = Field(default=None, max_length=8)
    pid: int | None = None
    exit_code: int | None = None
    signal: int | str | None = None
    command: str | None = Field(default=None, max_length=8192)
    duration_ms: int | None = None
    stdout_b64: str | None = None
    stderr_b64: str | None = None
    truncated: bool | None = None
    timed_out: bool | None = None
    dropped_type: str | None = Field(default=None, max_length=40)
    path: str | None = Field(default=None, max_length=4096)
    operation: str | None = Field(default=None, max_length=16)
    bytes: int | None = None
    error: str | None = Field(default=None, max_length=200)
    detail: str | None = Field(default=None, max_length=1000)


class EventsIn(Lenient):
    boot_id: str = Field(min_length=1, max_length=64)
    events: list[EventIn] = Field(max_length=10_000)


class EventsOut(Schema):
    accepted_through: int
