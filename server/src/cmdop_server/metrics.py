"""Prometheus metrics: what the control plane counts, and the text it serves on /metrics.

Counters and histograms live in each gunicorn worker's memory (a few dict updates per
request, no I/O on the request path). Prometheus scrapes one worker per request, so every
worker also writes its numbers to ``<CMDOP_METRICS_DIR>/<master pid>/<pid>.json`` at most
once a second, and the worker that answers a scrape adds its own live numbers to the other
workers' files. Counters of a worker that has exited stay in the sum (a reload must not
make a counter go down); its gauges (parked long-polls) do not. Gauges of the site as a
whole (agents online, sessions by status, certificate expiry) are read when scraped.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

# request latency, seconds: an API call's tail from 5 ms to 10 s, and a parked long-poll's
# whole wait (up to 25 s) in the last buckets
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FLUSH_SECONDS = 1.0

HELP = {
    "cmdop_http_requests_total": ("counter", "HTTP requests answered, by route group and "
                                  "status code."),
    "cmdop_http_request_duration_seconds": ("histogram", "Time from request to the end of "
                                            "the response, by route group."),
    "cmdop_agent_polls_parked": ("gauge", "Agent long-polls waiting for work now."),
    "cmdop_agents_online": ("gauge", "Enabled machines whose agent was heard from within "
                            "its missed-heartbeat grace."),
    "cmdop_agents_enrolled": ("gauge", "Enabled machines."),
    "cmdop_sessions": ("gauge", "Terminal sessions by status."),
    "cmdop_auth_failures_total": ("counter", "Failed authentications (audited), by event "
                                  "and reason."),
    "cmdop_auth_failures_recent_by_source": ("gauge", "Failed authentications in the last "
                                             "10 minutes of the addresses with the most."),
    "cmdop_auth_failures_recent_by_user": ("gauge", "Failed authentications in the last 10 "
                                           "minutes against the accounts with the most (id)."),
    "cmdop_rate_limited_total": ("counter", "Rate-limit refusals, by scope (one per "
                                 "subject over its limit: a client's address, a person)."),
    "cmdop_redis_errors_total": ("counter", "Requests answered 503 because Redis failed."),
    "cmdop_database_errors_total": ("counter", "Requests answered 503 because Postgres "
                                    "failed."),
    "cmdop_audit_write_failures_total": ("counter", "Audit rows that could not be stored "
                                         "(the action was refused), by stage."),
    "cmdop_db_pool_connections": ("gauge", "Pooled Postgres connections of the workers, by "
                                  "database and state (in_use, idle)."),
    "cmdop_db_pool_waiting": ("gauge", "Requests waiting for a pooled connection now."),
    "cmdop_db_pool_timeouts_total": ("counter", "Requests refused because no pooled "
                                     "connection came within pool_timeout."),
    "cmdop_certificate_expiry_timestamp_seconds": ("gauge", "When a certificate the control "
                                                   "plane uses expires (Unix time)."),
    "cmdop_metrics_workers": ("gauge", "gunicorn workers whose numbers this scrape sums."),
}

Labels = tuple[tuple[str, str], ...]


class _Registry:
    """This process's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, Labels], float] = {}
        self.gauges: dict[tuple[str, Labels], float] = {}
        # (name, labels) -> [bucket counts..., sum, count]
        self.histograms: dict[tuple[str, Labels], list[float]] = {}
        self.changed = False
        self.flusher_pid = 0

    def snapshot(self) -> dict:
        with self.lock:
            return {"counters": [[n, list(lb), v] for (n, lb), v in self.counters.items()],
                    "gauges": [[n, list(lb), v] for (n, lb), v in self.gauges.items()],
                    "histograms": [[n, list(lb), list(v)]
                                   for (n, lb), v in self.histograms.items()]}


_registry = _Registry()


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def inc(name: str, amount: float = 1.0, **labels: str) -> None:
    key = (name, _labels(labels))
    with _registry.lock:
        _registry.counters[key] = _registry.counters.get(key, 0.0) + amount
        _registry.changed = True
    _ensure_flusher()


def observe(name: str, seconds: float, **labels: str) -> None:
    key = (name, _labels(labels))
    with _registry.lock:
        row = _registry.histograms.get(key)
        if row is None:
            row = _registry.histograms[key] = [0.0] * (len(BUCKETS) + 2)
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                row[i] += 1
        row[-2] += seconds
        row[-1] += 1
        _registry.changed = True
    _ensure_flusher()


def _refresh_pools() -> None:
    """This worker's psycopg pools (Django's ``connection.pool``) as gauges and a counter."""
    from django.db import connections

    with _registry.lock:
        before = (dict(_registry.gauges), dict(_registry.counters))
    for alias in connections:
        pool = getattr(connections[alias], "pool", None)
        if pool is None:
            continue  # unpooled
        stats = pool.get_stats()
        idle, size = stats.get("pool_available", 0), stats.get("pool_size", 0)
        with _registry.lock:
            for state, value in (("in_use", size - idle), ("idle", idle)):
                _registry.gauges[("cmdop_db_pool_connections",
                                  _labels({"database": alias, "state": state}))] = value
            _registry.gauges[("cmdop_db_pool_waiting", _labels({"database": alias}))] = (
                stats.get("requests_waiting", 0))
            # counted by cmdop_server.postgres as it refuses (the pool's own count has each
            # step of a request's wait); reported from the start, at zero
            _registry.counters.setdefault(("cmdop_db_pool_timeouts_total",
                                           _labels({"database": alias})), 0.0)
    with _registry.lock:
        if (_registry.gauges, _registry.counters) != before:
            _registry.changed = True


def _add_gauge(name: str, amount: float) -> None:
    key = (name, ())
    with _registry.lock:
        _registry.gauges[key] = _registry.gauges.get(key, 0.0) + amount
        _registry.changed = True
    _ensure_flusher()


@contextmanager
def parked() -> Iterator[None]:
    """Counts an agent's long-poll as parked while the block runs."""
    _add_gauge("cmdop_agent_polls_parked", 1)
    try:
        yield
    finally:
        _add_gauge("cmdop_agent_polls_parked", -1)


def route_group(path: str) -> str:
    """A bounded label for a path (never the path itself: ids would explode the series)."""
    if path == "/api/agent/v1/work":
        return "agent_poll"
    for prefix, group in (("/api/agent/", "agent"), ("/api/v1/oauth/", "oauth"),
                          ("/api/v1/", "api"), ("/login/", "login"), ("/device/", "login"),
                          ("/assets/", "assets")):
        if path.startswith(prefix):
            return group
    if path in ("/metrics", "/healthz"):
        return path[1:]
    return "pages"


def instrument(app):
    """ASGI middleware: counts every HTTP request and times it to its last body byte."""

    async def application(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # an app that raised before answering: gunicorn answers 500
        answered = gone = False

        async def receive_watched():
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def send_counted(message):
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        try:
            await app(scope, receive_watched, send_counted)
        except asyncio.CancelledError:
            gone = True
            raise
        finally:
            if gone and not answered:
                # the client went away before the answer (an agent's parked poll, its
                # connection closed): nginx's 499, not a 5xx that would page someone
                status = 499
            group = route_group(scope["path"])
            inc("cmdop_http_requests_total", route=group, status=str(status))
            observe("cmdop_http_request_duration_seconds", time.perf_counter() - started,
                    route=group)

    return application


# --- sharing between workers ---

def _directory() -> Path | None:
    base = getattr(settings, "CMDOP_METRICS_DIR", "")
    # one folder per gunicorn master: a restarted service starts from zero, a reload
    # (same master, new workers) keeps the exited workers' counters
    return Path(base) / str(os.getppid()) if base else None


def _write_snapshot() -> None:
    directory = _directory()
    if directory is None:
        return
    _registry.changed = False
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / f"{os.getpid()}.json"
    temp = directory / f".{os.getpid()}.tmp"
    temp.write_text(json.dumps(_registry.snapshot()))
    os.replace(temp, target)


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        _refresh_pools()
        if _registry.changed:
            try:
                _write_snapshot()
            except OSError:
                # a full or read-only disk must not stop the worker: the live numbers are
                # still served when this worker answers a scrape
                _registry.changed = True


def _ensure_flusher() -> None:
    if _registry.flusher_pid == os.getpid() or not getattr(settings, "CMDOP_METRICS_DIR", ""):
        return
    with _registry.lock:
        if _registry.flusher_pid == os.getpid():
            return
        _registry.flusher_pid = os.getpid()  # a forked child starts its own
    threading.Thread(target=_flush_forever, name="cmdop-metrics", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _workers() -> list[tuple[dict, bool]]:
    """(snapshot, alive) of every worker of this master, this one live."""
    found = [(_registry.snapshot(), True)]
    directory = _directory()
    if directory is None or not directory.is_dir():
        return found
    for path in directory.glob("*.json"):
        pid = int(path.stem)
        if pid == os.getpid():
            continue
        try:
            found.append((json.loads(path.read_text()), _alive(pid)))
        except (OSError, ValueError):
            continue  # being replaced this instant: its numbers come next scrape
    return found


def merged() -> tuple[dict, dict, dict, int]:
    """Sum of every worker's counters and histograms, and of the live workers' gauges."""
    counters: dict[tuple[str, Labels], float] = {}
    gauges: dict[tuple[str, Labels], float] = {}
    histograms: dict[tuple[str, Labels], list[float]] = {}
    workers = _workers()
    for snap, alive in workers:
        for name, labels, value in snap["counters"]:
            key = (name, tuple(tuple(x) for x in labels))
            counters[key] = counters.get(key, 0.0) + value
        for name, labels, row in snap["histograms"]:
            key = (name, tuple(tuple(x) for x in labels))
            into = histograms.setdefault(key, [0.0] * len(row))
            histograms[key] = [a + b for a, b in zip(into, row, strict=True)]
        if alive:
            for name, labels, value in snap["gauges"]:
                key = (name, tuple(tuple(x) for x in labels))
                gauges[key] = gauges.get(key, 0.0) + value
    return counters, gauges, histograms, sum(alive for _, alive in workers)


# --- the exposition format ---

def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _series(name: str, labels: Labels | list, value: float) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels)
    number = repr(float(value)) if value != int(value) else str(int(value))
    return f"{name}{{{inner}}} {number}" if inner else f"{name} {number}"


def render(site_gauges: dict[tuple[str, Labels], float]) -> str:
    """The Prometheus text format (version 0.0.4) of every metric, HELP and TYPE first."""
    _refresh_pools()
    counters, gauges, histograms, workers = merged()
    gauges = {**gauges, **site_gauges, ("cmdop_metrics_workers", ()): float(workers)}
    # a gauge with no worker reporting it yet is still 0, not absent (alerts compare it)
    gauges.setdefault(("cmdop_agent_polls_parked", ()), 0.0)
    lines: list[str] = []
    for name, (kind, text) in HELP.items():
        rows = [(k, v) for k, v in {**counters, **gauges}.items() if k[0] == name]
        hist = [(k, v) for k, v in histograms.items() if k[0] == name]
        if not rows and not hist and kind == "counter":
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for (_, labels), value in sorted(rows):
            lines.append(_series(name, labels, value))
        for (_, labels), row in sorted(hist):
            for bound, count in zip(BUCKETS, row, strict=False):
                lines.append(_series(f"{name}_bucket", [*labels, ("le", repr(bound))], count))
            lines.append(_series(f"{name}_bucket", [*labels, ("le", "+Inf")], row[-1]))
            lines.append(_series(f"{name}_sum", labels, row[-2]))
            lines.append(_series(f"{name}_count", labels, row[-1]))
    return "\n".join(lines) + "\n"


# --- the site's own gauges and the endpoint ---

def _certificate_expiries() -> dict[tuple[str, Labels], float]:
    from cryptography import x509

    found: dict[tuple[str, Labels], float] = {}
    for name, path in settings.CMDOP_METRICS_CERTIFICATES.items():
        try:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError):
            continue  # unreadable: its absence from /metrics is what an alert sees
        found[("cmdop_certificate_expiry_timestamp_seconds", (("certificate", name),))] = (
            cert.not_valid_after_utc.timestamp())
    return found


def _database_gauges() -> dict[tuple[str, Labels], float]:
    from datetime import timedelta

    from django.db.models import Count, DateTimeField, ExpressionWrapper, F
    from django.utils import timezone

    from cmdop_server.machines.models import MISSED_HEARTBEATS_OFFLINE, Machine
    from cmdop_server.sessions.models import Session, Status

    enabled = Machine.unscoped.filter(disabled_at__isnull=True)
    # Machine.online in SQL: heard from within heartbeat_interval x MISSED_HEARTBEATS_OFFLINE
    until = ExpressionWrapper(F("last_seen_at") + F("heartbeat_interval") * timedelta(
        seconds=MISSED_HEARTBEATS_OFFLINE), output_field=DateTimeField())
    online = (enabled.filter(last_seen_at__isnull=False)
              .annotate(online_until=until).filter(online_until__gte=timezone.now()))
    gauges: dict[tuple[str, Labels], float] = {
        ("cmdop_agents_enrolled", ()): float(enabled.count()),
        ("cmdop_agents_online", ()): float(online.count())}
    counts = dict(Session.unscoped.values_list("status").annotate(n=Count("id")))
    for status in Status.values:
        gauges[("cmdop_sessions", (("status", status),))] = float(counts.get(status, 0))
    return gauges


# Per-address and per-account failures are read from the audit rows, for the few with the
# most only: a series per address ever seen would grow without bound
RECENT_FAILURES_SECONDS = 600
TOP_FAILING = 5


def _recent_failures() -> dict[tuple[str, Labels], float]:
    from datetime import timedelta

    from django.db.models import Count, Q
    from django.utils import timezone

    from cmdop_server.audit import AUDIT_DB
    from cmdop_server.audit.models import AuditEvent

    failed = AuditEvent.objects.using(AUDIT_DB).filter(
        Q(event__startswith="auth.") | Q(event="machine.enroll"), success=False,
        occurred_at__gte=timezone.now() - timedelta(seconds=RECENT_FAILURES_SECONDS))
    gauges: dict[tuple[str, Labels], float] = {}
    for field, name, label in (("ip", "cmdop_auth_failures_recent_by_source", "ip"),
                               ("user_id", "cmdop_auth_failures_recent_by_user", "user_id")):
        top = (failed.exclude(**{f"{field}__isnull": True}).values(field)
               .annotate(n=Count("id")).order_by("-n", field)[:TOP_FAILING])
        for row in top:
            gauges[(name, ((label, str(row[field])),))] = float(row["n"])
    return gauges


def allowed(client: str) -> bool:
    """Is ``client`` (the address our nginx saw) in server.toml [metrics] allowed_sources?"""
    import ipaddress

    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False)
               for net in settings.CMDOP_METRICS_ALLOWED_SOURCES)


def view(request):
    """GET /metrics: the text format, only to an allowed source (nginx refuses the others
    first; this is the second line, for a request that reaches gunicorn another way)."""
    from django.db import DatabaseError
    from django.http import HttpResponse

    from cmdop_server import netinfo
    from cmdop_server.errors import default_error

    if not allowed(netinfo.client_ip(request)):
        return default_error(request, 403)
    gauges = _certificate_expiries()
    for source in (_database_gauges, _recent_failures):
        try:
            gauges |= source()
        except DatabaseError:
            # Postgres down: the request and error counters still tell the story
            inc("cmdop_database_errors_total")
    response = HttpResponse(render(gauges), content_type="text/plain; version=0.0.4; "
                            "charset=utf-8")
    response["Cache-Control"] = "no-store"
    return response
