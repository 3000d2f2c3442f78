"""The running agent: long-poll for work, send events, heartbeat, shut down cleanly.

Threads, each with its own HTTPS connection: ``poll`` (GET work, run it, ack), ``send``
(POST event batches from the outbox), ``heartbeat``, plus ``pty-io`` (pty_session.py).
Every network failure is retried with full-jitter exponential backoff (capped at the config's
``reconnect_max_delay``, 2 minutes by default); a credential the control plane rejects, or
TLS it cannot offer, stops the agent with an error.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from collections.abc import Callable

from .api import AgentApi, Auth
from .config import Config
from .errors import AgentError, ServerError, TlsError, TransportError
from .pty_session import SessionManager
from .runtime import Backoff, Journal, Outbox
from .work import Executor

log = logging.getLogger("cmdop_agent")

POLL_WAIT = 25
SESSION_EXIT_WAIT = 2.0
OUTBOX_MAX_BYTES = 16 * 1024 * 1024


class Agent:
    def __init__(self, config: Config, auth: Auth, heartbeat_interval: float = 30.0) -> None:
        self.config = config
        self.auth = auth
        self.boot_id = "b_" + secrets.token_hex(8)
        self.outbox = Outbox()
        self.journal = Journal(config.state_dir)
        self.sessions = SessionManager(config.limits, self.outbox)
        self.executor = Executor(config.limits, self.outbox, self.journal, self.sessions)
        self.heartbeat_interval = heartbeat_interval
        self.stopping = threading.Event()
        self.fatal: BaseException | None = None

    def _retrying(self, name: str, step: Callable[[AgentApi], None]) -> None:
        """Run ``step`` until stopped; back off on failures, stop the agent on fatal ones."""
        api = AgentApi(self.config, self.auth)
        backoff = Backoff(cap=self.config.reconnect_max_delay)
        while not self.stopping.is_set():
            try:
                step(api)
                backoff.reset()
            except (KeyError, TypeError, ValueError) as exc:  # a malformed reply: retry later
                delay = backoff.next_delay()
                log.warning("%s: unexpected reply (%r); retrying in %.1fs", name, exc, delay)
                self.stopping.wait(delay)
            except AgentError as exc:
                retryable = isinstance(exc, TransportError) and not isinstance(exc, TlsError)
                retryable |= isinstance(exc, ServerError) and exc.retryable
                if not retryable:
                    self.fatal = exc
                    self.stopping.set()
                    break
                delay = backoff.next_delay()
                if isinstance(exc, ServerError) and exc.retry_after:
                    delay = max(delay, exc.retry_after)
                log.warning("%s: %s; retrying in %.1fs", name, exc, delay)
                self.stopping.wait(delay)
        api.close()

    def _poll_once(self, api: AgentApi, state: dict) -> None:
        # Results not yet delivered (command output, file contents) bound what we take on:
        # while the outbox is full, no new work is fetched.
        if not self.outbox.wait_below(OUTBOX_MAX_BYTES, timeout=1.0):
            return
        reply = api.poll(state.get("cursor"), POLL_WAIT)
        ids = [i for i in (self.executor.handle(item) for item in reply.get("items", []))
               if i is not None]
        if ids:
            api.ack(ids)
        state["cursor"] = reply.get("cursor", state.get("cursor"))

    def _send_once(self, api: AgentApi) -> None:
        batch = self.outbox.batch(timeout=1.0)
        while batch:
            try:
                reply = api.post_events(self.boot_id, batch)
            except ServerError as exc:
                if exc.status == 413 and len(batch) > 1:
                    batch = batch[: len(batch) // 2]  # the protocol: split and retry
                    continue
                if exc.status not in (400, 413, 422):
                    raise
                if len(batch) > 1:
                    batch = batch[:1]  # find the event the server refuses
                    continue
                # One event the server will never take: replace it, keeping seq gapless, so
                # it cannot block every later event of this boot.
                bad = batch[0]
                if bad["type"] == "agent.dropped":
                    raise
                log.warning("control plane refused event %d (%s): %s", bad["seq"], bad["type"],
                            exc.detail)
                batch = [self.outbox.replace(bad["seq"], {
                    "type": "agent.dropped", "dropped_type": str(bad["type"])[:40],
                    "work_id": bad.get("work_id"), "session_id": bad.get("session_id"),
                    "detail": f"{exc.status} {exc.code}"[:200]})]
                continue
            self.outbox.confirm(int(reply.get("accepted_through", 0)))
            return

    def _heartbeat_once(self, api: AgentApi) -> None:
        reply = api.heartbeat(self.boot_id, len(self.sessions))
        self.heartbeat_interval = float(reply.get("heartbeat_interval", self.heartbeat_interval))
        if reply.get("credential") and self._adopt(str(reply["credential"])):
            return  # heartbeat again at once, with the new credential: that confirms it
        self.stopping.wait(self.heartbeat_interval)

    def _adopt(self, credential: str) -> bool:
        """Store and use a new machine credential (a handover); on a failure keep the old
        one, which the control plane accepts until the handover's deadline, and take the
        fresh credential the next heartbeat brings."""
        try:
            self.auth.adopt(credential)
        except (OSError, AgentError) as exc:
            log.warning("could not store the new machine credential (%s); keeping the "
                        "current one until the next heartbeat", exc)
            return False
        log.info("machine credential renewed (%s)", self.config.credential_file)
        return True

    def run(self) -> None:
        """Block until SIGTERM/SIGINT (exit cleanly) or a fatal error (raised)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        poll_state: dict = {}
        threads = [
            threading.Thread(target=self._retrying, name=name, args=(name, step), daemon=True)
            for name, step in (
                ("poll", lambda api: self._poll_once(api, poll_state)),
                ("send", self._send_once),
                ("heartbeat", self._heartbeat_once),
            )
        ]
        for t in threads:
            t.start()
        log.info("agent started (boot %s), polling %s", self.boot_id, self.config.server)
        self.stopping.wait()
        self.shutdown(threads[1])
        if self.fatal is not None:
            raise self.fatal

    def shutdown(self, sender: threading.Thread) -> None:
        self.sessions.close_all()
        if self.fatal is None:
            # Let the shells exit so their session.exited reports are queued, then flush
            # what is queued: the sender thread stopped with the others.
            if not self.sessions.wait_all_closed(SESSION_EXIT_WAIT):
                # a shell that ignores SIGHUP (or a slow machine): end it, so that its
                # session.exited is still reported before the agent goes
                self.sessions.close_all(signal.SIGKILL)
                self.sessions.wait_all_closed(SESSION_EXIT_WAIT)
            sender.join(timeout=2)
            flush_api = AgentApi(self.config, self.auth)
            try:
                for _ in range(10):
                    if not len(self.outbox):
                        break
                    self._send_once(flush_api)
            except AgentError as exc:
                log.warning("could not flush %d events at shutdown: %s", len(self.outbox), exc)
            flush_api.close()
        self.sessions.stop()
        self.journal.close()
        log.info("agent stopped")
