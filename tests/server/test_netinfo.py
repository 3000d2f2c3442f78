"""Whose address a request carries: nginx's word only from a trusted peer (unit)."""

import pytest
from cmdop_server.netinfo import UNIX_PEER, client_ip
from django.test import RequestFactory, override_settings

pytestmark = pytest.mark.unit


def _ip(remote: str, forwarded: str | None = None) -> str:
    extra = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    return client_ip(RequestFactory().get("/", REMOTE_ADDR=remote, **extra))


@override_settings(CMDOP_TRUSTED_PROXIES=[UNIX_PEER])
def test_the_unix_socket_peer_is_nginx_and_its_header_is_the_client():
    assert _ip("", "203.0.113.5") == "203.0.113.5"
    # a client's own header reaches the app only behind nginx's (which overwrites it);
    # where a chain arrives anyway, the hop the trusted peer added is the last
    assert _ip("", "198.51.100.1, 203.0.113.5") == "203.0.113.5"


@override_settings(CMDOP_TRUSTED_PROXIES=[UNIX_PEER])
def test_no_or_garbage_header_from_the_socket_is_no_address():
    assert _ip("") == ""
    assert _ip("", "not-an-ip") == ""


@override_settings(CMDOP_TRUSTED_PROXIES=[UNIX_PEER])
def test_a_tcp_peer_is_not_trusted_when_only_the_socket_is():
    assert _ip("192.0.2.10", "203.0.113.5") == "192.0.2.10"


@override_settings(CMDOP_TRUSTED_PROXIES=[])
def test_nothing_trusted_means_the_peer_itself():
    assert _ip("192.0.2.10", "203.0.113.5") == "192.0.2.10"
    assert _ip("", "203.0.113.5") == ""


@override_settings(CMDOP_TRUSTED_PROXIES=[UNIX_PEER])
def test_the_middleware_holds_the_address_while_the_request_is_served():
    import asyncio

    from cmdop_server.netinfo import ClientAddressMiddleware, current_client_ip
    from django.http import HttpResponse

    seen = []

    def view(request):
        seen.append(current_client_ip())
        return HttpResponse()

    async def async_view(request):
        return view(request)

    request = RequestFactory().get("/", REMOTE_ADDR="", HTTP_X_FORWARDED_FOR="203.0.113.5")
    ClientAddressMiddleware(view)(request)
    asyncio.run(ClientAddressMiddleware(async_view)(request))
    assert seen == ["203.0.113.5", "203.0.113.5"]
    assert current_client_ip() == ""  # not after the request
