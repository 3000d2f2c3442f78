"""Text the database cannot store (NUL, lone surrogates) is a 400 naming the field, and no
input to any JSON endpoint of either OpenAPI schema (user API, agent protocol) is a 5xx."""

import itertools
import json
import re
from urllib.parse import quote

import pytest
from cmdop_server import redis_client
from cmdop_server.identity import actions
from cmdop_server.identity.models import Membership
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.helpers import bearer, make_user
from tests.server_sessions.helpers import enroll, make_session, post

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]

_seq = itertools.count()


def _world() -> dict:
    """A workspace with its owner's API key, an enrolled machine and a running session."""
    from cmdop_server.machines.models import Machine
    from cmdop_server.sessions.models import Status

    owner = make_user()
    ws = actions.do_create_workspace(owner, f"text{next(_seq)}", "Text")
    membership = Membership.objects.in_workspace(ws).get(user=owner)
    _, key = actions.do_create_api_key(membership, "k")
    machine = enroll(ws, owner)
    session = make_session(ws, Machine.objects.in_workspace(ws).get(
        public_id=machine["machine_id"]), Status.CONNECTED, owner)
    return {"slug": ws.slug, "key": key, "credential": machine["credential"],
            "machine_id": machine["machine_id"], "session_id": session.public_id,
            "user_id": str(owner.pk)}


def _bad_request(resp, field: str) -> None:
    assert resp.status_code == 400, resp.content
    assert field in resp.json()["detail"], resp.json()


def test_nul_in_an_api_key_name_is_a_400_naming_the_field():
    world = _world()
    resp = post(Client(), f"/api/v1/workspaces/{world['slug']}/api-keys", {"name": "a\x00b"},
                world["key"])
    _bad_request(resp, "name")


def test_nul_in_a_machine_id_is_a_400_naming_the_field():
    world = _world()
    resp = post(Client(), f"/api/v1/workspaces/{world['slug']}/sessions",
                {"machine_id": "m_\x00" + "a" * 10}, world["key"])
    _bad_request(resp, "machine_id")


def test_a_lone_surrogate_is_a_400_naming_the_field():
    world = _world()
    resp = post(Client(), "/api/agent/v1/heartbeat",
                {"version": "1", "boot_id": "b", "hostname": "web\ud800"}, world["credential"])
    _bad_request(resp, "hostname")


def test_nul_deep_in_a_list_field_is_refused():
    world = _world()
    resp = post(Client(), "/api/agent/v1/events", {"boot_id": "b", "events": [
        {"seq": 1, "type": "output", "session_id": world["session_id"],
         "data_b64": "aGk=\x00"}]}, world["credential"])
    _bad_request(resp, "data_b64")


def test_nul_in_a_path_parameter_is_a_400():
    world = _world()
    resp = Client().get(f"/api/v1/workspaces/{world['slug']}/sessions/s_%00x",
                        **bearer(world["key"]))
    _bad_request(resp, "path")


def test_nul_in_a_form_field_is_a_400():
    resp = Client().post("/api/v1/oauth/device_authorization",
                         "client_id=cmdop-cli&device_name=a%00",
                         content_type="application/x-www-form-urlencoded")
    _bad_request(resp, "device_name")


# ---- every JSON endpoint, any body ---------------------------------------------------------

_NASTY_TEXT = st.text(alphabet=st.one_of(st.characters(), st.sampled_from("\x00\ud800\udfff")),
                      max_size=60)
_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                       st.floats(allow_nan=False), _NASTY_TEXT)
_ANY_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_NASTY_TEXT, inner, max_size=4)), max_leaves=12)


def _operations() -> list[tuple[str, str, str, dict, dict]]:
    """(api prefix, method, path template, request-body schema, components) of every JSON
    operation."""
    client, found = Client(), []
    for prefix in ("/api/v1", "/api/agent/v1"):
        schema = client.get(f"{prefix}/openapi.json").json()
        components = schema.get("components", {}).get("schemas", {})
        for path, item in schema["paths"].items():
            for method, op in item.items():
                body = op.get("requestBody", {}).get("content", {}).get("application/json")
                if body is not None:
                    found.append((prefix, method, path, _resolve(body["schema"], components),
                                  components))
    return found


def _resolve(schema: dict, components: dict) -> dict:
    ref = schema.get("$ref")
    return components[ref.rsplit("/", 1)[-1]] if ref else schema


def _value_for(prop: dict, components: dict) -> st.SearchStrategy:
    """Mostly a plausible value of the declared type, so that validation passes and the
    input reaches the code behind it; else text with NUL or a surrogate, or any JSON."""
    prop = _resolve(prop, components)
    kind = prop.get("type") or next((p.get("type") for p in prop.get("anyOf", ())
                                     if p.get("type") != "null"), None)
    if kind == "object" or "properties" in prop:
        plausible = _body(prop, components)
    elif kind == "array":
        plausible = st.lists(_value_for(prop.get("items", {}), components), max_size=3)
    elif "enum" in prop:
        plausible = st.sampled_from(prop["enum"])
    else:
        plausible = {"string": st.sampled_from(["s_x", "m_x", "/srv/x", "output", "aGk="]),
                     "integer": st.integers(min_value=-2, max_value=10) | st.integers(),
                     "number": st.floats(allow_nan=False),
                     "boolean": st.booleans()}.get(kind, _ANY_JSON)
    poisoned = st.builds(lambda s, bad: s + bad, st.text(max_size=5),
                         st.sampled_from(["\x00", "\ud800", "a\x00b"]))
    return st.one_of(plausible, plausible, poisoned, _ANY_JSON)


def _body(schema: dict, components: dict) -> st.SearchStrategy:
    props = {name: _value_for(p, components) for name, p in schema.get("properties", {}).items()}
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries({k: v for k, v in props.items() if k in required},
                                 optional={k: v for k, v in props.items() if k not in required})


def _path_value(world: dict, name: str) -> st.SearchStrategy:
    """The real object for the parameter (mostly), or any non-empty text."""
    real = st.just(world.get(name, "1"))
    return st.one_of(real, real, real, _NASTY_TEXT.filter(bool))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_input_to_any_json_endpoint_is_a_5xx(data):
    redis_client.client().flushdb()
    world = _world()
    prefix, method, template, schema, components = data.draw(st.sampled_from(_operations()),
                                                             "operation")
    def fill(match: re.Match) -> str:
        value = data.draw(_path_value(world, match.group(1)), match.group(1))
        return quote(value.encode("utf-8", "surrogatepass"), safe="")

    path = re.sub(r"\{(\w+)\}", fill, template)
    body = data.draw(st.one_of(_body(schema, components), _body(schema, components), _ANY_JSON),
                     "body")
    token = world["credential"] if prefix == "/api/agent/v1" else world["key"]
    resp = Client(raise_request_exception=False).generic(
        method.upper(), path if path.startswith(prefix) else prefix + path,
        json.dumps(body), content_type="application/json", **bearer(token))
    assert resp.status_code < 500, (method, path, body, resp.content)
