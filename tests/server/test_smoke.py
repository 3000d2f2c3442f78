import pytest

from tests.server.helpers import bearer, make_user, tokens_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(databases=["default", "audit"])]


def test_device_flow_token_reaches_me(client):
    user = make_user()
    body = tokens_for(user)
    resp = client.get("/api/v1/me", **bearer(body["access_token"]))
    assert resp.status_code == 200, resp.content
    assert resp.json()["username"] == user.username
