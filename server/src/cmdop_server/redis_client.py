"""The one module that talks to Redis: a process-wide client built from settings.CMDOP_REDIS."""

from __future__ import annotations

import functools

import redis
from django.conf import settings

KEY_PREFIX = "app:"  # the Redis ACL lets the app user touch ~app:* only


@functools.cache
def client() -> redis.Redis:
    return redis.Redis(
        socket_timeout=2, socket_connect_timeout=2, health_check_interval=30,
        **settings.CMDOP_REDIS,
    )
