"""OAuth 2.0 endpoints: device authorization (RFC 8628), token, revocation (RFC 7009).

Bodies are application/x-www-form-urlencoded as the RFCs require; unrecognised parameters
are ignored (RFC 6749 §3.2). Errors use RFC 6749 §5.2 codes in our one error shape.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from ninja import Form, Router, Schema
from pydantic import Field

from cmdop_server import credentials, ratelimit
from cmdop_server.identity import actions
from cmdop_server.identity.oauth_clients import CLIENTS, SCOPES
from cmdop_server.netinfo import client_ip
from cmdop_server.textinput import Input

router = Router(tags=["oauth"])

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


class DeviceAuthorizationForm(Input):
    client_id: str = Field(max_length=64)
    scope: str = Field(default="api", max_length=200)
    device_name: str = Field(default="", max_length=200,
                             description="Extension: shown to the user on the approval page.")


class TokenForm(Input):
    grant_type: str = Field(max_length=100)
    client_id: str = Field(max_length=64)
    device_code: str | None = Field(default=None, max_length=200)
    refresh_token: str | None = Field(default=None, max_length=200)


class RevokeForm(Input):
    token: str = Field(max_length=200)
    token_type_hint: str | None = Field(default=None, max_length=50)


class DeviceAuthorizationOut(Schema):
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


class TokenOut(Schema):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    scope: str


def _client(client_id: str) -> None:
    if client_id not in CLIENTS:
        raise actions.OAuthError("invalid_client", "Unknown client_id.", status=401)


def _no_store(body: dict) -> JsonResponse:
    response = JsonResponse(body)
    response["Cache-Control"] = "no-store"
    response["Pragma"] = "no-cache"
    return response


@router.post("/device_authorization", auth=None, response=DeviceAuthorizationOut)
def device_authorization(request: HttpRequest, form: Form[DeviceAuthorizationForm]):
    ip = client_ip(request)
    ratelimit.enforce("auth", f"ip:{ip}")
    _client(form.client_id)
    scopes = form.scope.split()
    if not scopes or not set(scopes) <= SCOPES:
        raise actions.OAuthError("invalid_scope", "Unknown scope.")
    start = actions.do_start_device_authorization(
        form.client_id, " ".join(scopes), form.device_name, ip,
        request.META.get("HTTP_USER_AGENT", ""))
    uri = settings.CMDOP_PUBLIC_URL.rstrip("/") + "/device/"
    return _no_store({
        "device_code": start.device_code,
        "user_code": credentials.format_user_code(start.user_code),
        "verification_uri": uri,
        "verification_uri_complete": f"{uri}?user_code={start.user_code}",
        "expires_in": start.expires_in,
        "interval": start.interval,
    })


@router.post("/token", auth=None, response=TokenOut)
def token(request: HttpRequest, form: Form[TokenForm]):
    ip = client_ip(request)
    _client(form.client_id)
    if form.grant_type == DEVICE_GRANT:
        if not form.device_code:
            raise actions.OAuthError("invalid_request", "device_code is required.")
        # Polling is paced per device code by slow_down, not by the auth rate limit; only
        # presenting a code that is not (or no longer) valid counts as a failed attempt.
        ratelimit.refuse_if_exhausted("auth", f"ip:{ip}")
        try:
            grant = actions.do_poll_device_token(form.device_code, form.client_id, ip)
        except actions.OAuthError as exc:
            if exc.code == "invalid_grant":
                ratelimit.enforce("auth", f"ip:{ip}")
            raise
    elif form.grant_type == "refresh_token":
        if not form.refresh_token:
            raise actions.OAuthError("invalid_request", "refresh_token is required.")
        ratelimit.enforce("auth", f"ip:{ip}",
                          "refresh:" + credentials.sha256_hex(form.refresh_token))
        grant = actions.do_refresh(form.refresh_token, form.client_id, ip)
    else:
        raise actions.OAuthError("unsupported_grant_type", "Unsupported grant_type.")
    return _no_store({
        "access_token": grant.access_token,
        "token_type": "Bearer",
        "expires_in": grant.expires_in,
        "refresh_token": grant.refresh_token,
        "scope": grant.scope,
    })


@router.post("/revoke", auth=None, response={200: None})
def revoke(request: HttpRequest, form: Form[RevokeForm]):
    ip = client_ip(request)
    ratelimit.enforce("auth", f"ip:{ip}")
    actions.do_revoke_token(form.token, ip)
    return _no_store({})
