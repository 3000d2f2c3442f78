"""Who is calling: the client's address as our nginx saw it, for audit rows and per-IP limits.

A deployed gunicorn listens only on a unix socket that only nginx can open, so the peer of
every request is our nginx. Over a unix socket gunicorn's asgi worker puts no ``client``
in the scope (the peer has no address) and REMOTE_ADDR is empty: that peer is named
``UNIX_PEER`` and is trusted when CMDOP_TRUSTED_PROXIES lists it (production's default).
nginx *overwrites* X-Forwarded-For with its ``$remote_addr``, so from a trusted peer the
header's last hop is the address nginx accepted the connection from; a client's own
header never survives nginx, and is never read from a peer that is not trusted.

``ClientAddressMiddleware`` keeps the address of the request being served, so that every
audit row written while serving it carries it (``audit.record``).
"""

from __future__ import annotations

import contextvars
import ipaddress

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

UNIX_PEER = "unix"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("cmdop_client_ip", default="")


def is_address(ip: str) -> bool:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


def is_network(value: str) -> bool:
    """An address or a network in CIDR notation (host bits may be set: 10.0.0.5/24)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def client_ip(request: HttpRequest) -> str:
    """The client's address, or "" when nobody trusted told us (a direct socket probe)."""
    remote = request.META.get("REMOTE_ADDR") or UNIX_PEER
    direct = "" if remote == UNIX_PEER else remote
    if remote not in settings.CMDOP_TRUSTED_PROXIES:
        return direct
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").rsplit(",", 1)[-1].strip()
    return forwarded if is_address(forwarded) else direct


def current_client_ip() -> str:
    """The address of the request this code serves ("" outside a request: timers, tasks)."""
    return _current.get()


class ClientAddressMiddleware:
    """Remembers the request's client address for the code that serves it."""

    # both modes: a sync-only middleware would put every async long-poll on a thread
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self.__acall__(request)
        token = _current.set(client_ip(request))
        try:
            return self.get_response(request)
        finally:
            _current.reset(token)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        token = _current.set(client_ip(request))
        try:
            return await self.get_response(request)
        finally:
            _current.reset(token)
