"""The error types of both commands: every one prints as a single line one can act on."""

import sys
from collections.abc import Callable


class AgentError(Exception):
    """A failure the CLI reports as ``cmdop-agent: <message>`` and a non-zero exit."""

    exit_code = 1


class ConfigError(AgentError):
    """Config or credential file missing, malformed or unsafe."""

    exit_code = 78  # EX_CONFIG


class ServerError(AgentError):
    """The control plane answered with the protocol's error shape."""

    def __init__(
        self, status: int, code: str, detail: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"control plane refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Only a rejected identity (401, 403) or version (426) stops a running agent; a
        malformed-request answer is retried with backoff rather than ending the agent."""
        return self.status not in (401, 403, 426)


class TransportError(AgentError):
    """Could not reach the control plane (network, TLS, proxy)."""

    exit_code = 69  # EX_UNAVAILABLE


class WorkError(Exception):
    """A work item was refused; reported to the control plane as a ``work.error`` event."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class TlsError(TransportError):
    """The control plane's TLS is unacceptable (untrusted certificate, no TLS 1.3): not retried."""


def one_line_errors(prog: str, command: Callable[[], int],
                    explain: Callable[[AgentError], str] = str) -> int:
    """Run a command line's work; a failure becomes ``prog: <one line>`` and an exit code,
    never a traceback."""
    try:
        return command()
    except AgentError as exc:
        print(f"{prog}: {explain(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        print(f"{prog}: {exc.strerror or exc}{name}", file=sys.stderr)
        return 1
