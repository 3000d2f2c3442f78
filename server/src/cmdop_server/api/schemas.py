"""Request/response bodies. Request schemas forbid unknown fields (a typo is an error)."""

from __future__ import annotations

from datetime import datetime

from ninja import Schema
from pydantic import ConfigDict, Field

from cmdop_server.permissions import Role
from cmdop_server.textinput import Input


class Strict(Input):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(Schema):
    error: str
    detail: str


class WorkspaceIn(Strict):
    slug: str = Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
    name: str = Field(min_length=1, max_length=200)


class WorkspacePatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    guests_enabled: bool | None = None


class WorkspaceOut(Schema):
    slug: str
    name: str
    guests_enabled: bool
    role: str


class MemberIn(Strict):
    username: str = Field(min_length=1, max_length=150)
    role: Role


class MemberPatch(Strict):
    role: Role


class MemberOut(Schema):
    user_id: int
    username: str
    role: str


class ApiKeyIn(Strict):
    name: str = Field(min_length=1, max_length=100)


class ApiKeyOut(Schema):
    id: int
    name: str
    prefix: str
    last_four: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    user_id: int


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself. Shown only in this response.")


class MeOut(Schema):
    id: int
    username: str
    method: str


class TokenFamilyOut(Schema):
    id: int
    client_id: str
    device_name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
