"""Bad input gets the documented JSON error, never a 500 or an HTML page."""

import json
import secrets

import pytest
from cmdop_server import credentials
from cmdop_server.identity import actions
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.helpers import bearer, make_user, tokens_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]


@pytest.fixture
def token():
    user = make_user()
    actions.do_create_workspace(user, "acme", "Acme")
    return tokens_for(user)["access_token"]


def _shape(resp, status, error):
    assert resp.status_code == status, resp.content
    assert resp["Content-Type"].startswith("application/json")
    body = resp.json()
    assert body["error"] == error and isinstance(body["detail"], str), body
    return body


def test_malformed_json(token):
    resp = Client().post("/api/v1/workspaces", '{"slug": "x",', content_type="application/json",
                         **bearer(token))
    _shape(resp, 400, "bad_request")


def test_unknown_fields_are_refused(token):
    resp = Client().post("/api/v1/workspaces", {"slug": "new", "name": "N", "owner": "me"},
                         content_type="application/json", **bearer(token))
    assert "owner" in _shape(resp, 400, "bad_request")["detail"]


def test_wrong_types_and_values(token):
    c = Client()
    _shape(c.post("/api/v1/workspaces", {"slug": "UPPER case", "name": "x"},
                  content_type="application/json", **bearer(token)), 400, "bad_request")
    _shape(c.post("/api/v1/workspaces", ["a"], content_type="application/json",
                  **bearer(token)), 400, "bad_request")
    _shape(c.patch("/api/v1/workspaces/acme/members/abc", {"role": "god"},
                   content_type="application/json", **bearer(token)), 400, "bad_request")


def test_wrong_content_type(token):
    resp = Client().post("/api/v1/workspaces", "slug=x&name=y",
                         content_type="application/x-www-form-urlencoded", **bearer(token))
    _shape(resp, 415, "unsupported_media_type")
    resp = Client().post("/api/v1/oauth/token", json.dumps({"grant_type": "refresh_token"}),
                         content_type="application/json")
    _shape(resp, 400, "invalid_request")


def test_oversized_body(token):
    big = json.dumps({"slug": "x", "name": "y" * (1024 * 1024 + 10)})
    _shape(Client().post("/api/v1/workspaces", big, content_type="application/json",
                         **bearer(token)), 413, "payload_too_large")


def test_forged_and_malformed_credentials():
    c = Client()
    forged_key = credentials.new_api_key("cmd_live_")  # valid checksum, not in the database
    bad_checksum = forged_key[:-1] + ("A" if forged_key[-1] != "A" else "B")
    for cred in ["cmd_at_" + secrets.token_urlsafe(32), forged_key, bad_checksum, "garbage",
                 "cmd_rt_" + secrets.token_urlsafe(32)]:
        _shape(c.get("/api/v1/me", **bearer(cred)), 401, "unauthorized")
    _shape(c.get("/api/v1/me", HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz"), 401, "unauthorized")
    _shape(c.get("/api/v1/me"), 401, "unauthorized")


def test_unknown_paths_and_methods_are_json():
    c = Client()
    _shape(c.get("/api/v1/nope"), 404, "not_found")
    _shape(c.get("/api/v1/"), 404, "not_found")
    _shape(c.get("/api/v1/oauth/token"), 405, "method_not_allowed")


def test_openapi_schema_is_served():
    schema = Client().get("/api/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/oauth/device_authorization" in schema["paths"]
    assert "/api/v1/workspaces/{slug}/api-keys" in schema["paths"]
    invite = schema["paths"]["/api/v1/workspaces/{slug}/members"]["post"]
    assert invite["x-cmdop-action"] == "member.invite"
    assert invite["x-cmdop-roles"] == ["admin", "owner"]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fields=st.dictionaries(
    st.sampled_from(["grant_type", "client_id", "device_code", "refresh_token", "scope",
                     "junk"]),
    st.text(max_size=300), max_size=5))
def test_token_endpoint_never_500s(fields):
    from urllib.parse import urlencode

    from cmdop_server import redis_client

    redis_client.client().flushdb()
    resp = Client().post("/api/v1/oauth/token", urlencode(fields),
                         content_type="application/x-www-form-urlencoded")
    assert resp.status_code in (400, 401), resp.content
    assert "error" in resp.json()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.binary(max_size=400))
def test_json_endpoint_never_500s(token, body):
    resp = Client().post("/api/v1/workspaces", body, content_type="application/json",
                         **bearer(token))
    assert resp.status_code in (201, 400, 409), resp.content
    assert resp["Content-Type"].startswith("application/json")


def test_an_unexpected_exception_is_a_json_500(token, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret-ish detail that must not reach the client")

    monkeypatch.setattr(actions, "do_revoke_family", boom)
    resp = Client(raise_request_exception=False).delete("/api/v1/tokens/1", **bearer(token))
    body = _shape(resp, 500, "internal_error")
    assert "secret-ish" not in body["detail"]
