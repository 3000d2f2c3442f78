"""Rate limits in Redis, shared by every worker and node: fixed one-window counters.

Each (scope, principal-or-IP, window) is one key: a Lua script INCRs it and, on the first
hit, sets its expiry, atomically — two workers can never both see "9" and both pass.
Fixed windows aligned to the epoch (e.g. each UTC minute): a burst of 2x the limit is
possible across a window boundary; that is the accepted price of one key per check.
Retry-After is the whole seconds left in the current window (at least 1).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from django.conf import settings

from cmdop_server import metrics, redis_client

_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "m": 60, "minute": 60, "h": 3600,
          "hour": 3600}

_SCRIPT = """
local n = redis.call('INCRBY', KEYS[1], ARGV[2])
if n == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def clock() -> float:
    """The windows' clock (a test runs two minutes of typing on a clock of its own)."""
    return time.time()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int


class RateLimitedError(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited, retry after {retry_after}s")
        self.retry_after = retry_after


def parse_rate(rate: str) -> tuple[int, int]:
    """"10/min" -> (10, 60)."""
    count, _, unit = rate.partition("/")
    return int(count), _UNITS[unit.strip().lower()]


def _window(scope: str, subject: str, now: float | None) -> tuple[int, str, float]:
    limit, window = parse_rate(settings.CMDOP_RATE_LIMITS[scope])
    now = clock() if now is None else now
    index = int(now // window)
    digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
    return limit, redis_client.key(f"rl:{scope}:{digest}:{index}"), (index + 1) * window - now


def hit(scope: str, subject: str, now: float | None = None, amount: int = 1) -> Decision:
    """Count one request of ``subject`` (e.g. "ip:10.0.0.1") against ``scope``'s limit, or
    ``amount`` units of it (bytes, for a byte-rate scope such as ``input_bytes``)."""
    limit, key, remaining = _window(scope, subject, now)
    expire_ms = int(remaining * 1000) + 1000
    count = int(redis_client.client().eval(_SCRIPT, 1, key, expire_ms, max(1, amount)))
    if count > limit:
        metrics.inc("cmdop_rate_limited_total", scope=scope)
    return Decision(count <= limit, max(1, math.ceil(remaining)))


def refuse_if_exhausted(scope: str, subject: str) -> None:
    """Refuse without counting when ``subject`` has no requests left in this window: for
    endpoints that count only failures, so an exhausted client does no work at all."""
    limit, key, remaining = _window(scope, subject, None)
    if int(redis_client.client().get(key) or 0) >= limit:
        metrics.inc("cmdop_rate_limited_total", scope=scope)
        raise RateLimitedError(max(1, math.ceil(remaining)))


def enforce(scope: str, *subjects: str) -> None:
    """Count the request against every subject (IP and principal); refuse if any is over."""
    worst = 0
    for subject in subjects:
        decision = hit(scope, subject)
        if not decision.allowed:
            worst = max(worst, decision.retry_after)
    if worst:
        raise RateLimitedError(worst)


def enforce_amount(scope: str, subject: str, amount: int) -> None:
    """Count ``amount`` units (bytes) against a byte-rate scope; refuse once it is over."""
    decision = hit(scope, subject, amount=amount)
    if not decision.allowed:
        raise RateLimitedError(decision.retry_after)
