"""``cmdop``: the person's command line. Every failure is one line and a non-zero exit."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .. import __version__
from ..errors import AgentError, ServerError, one_line_errors

EXAMPLES = """\
examples:
  cmdop login --server https://cmdop.example.com --ca site-ca.pem
  cmdop machines
  cmdop connect web1                     (Enter ~ . detaches; cmdop join returns)
  cmdop exec web1 -- systemctl status nginx
  cmdop cp ./app.conf web1:/tmp/app.conf
  cmdop cp web1:/etc/hostname ./hostname
  cmdop sessions
  cmdop join s_abc123 --observe
  cmdop audit export --since 7d --format csv > audit.csv
  export CMDOP_API_KEY=cmd_live_...      (instead of a login; or api_key in ~/.cmdop/config.yaml)
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="control plane URL (https://…)")
    common.add_argument("--ca", type=Path, help="CA certificate file of the site "
                        "(default: the system trust store)")
    common.add_argument("-w", "--workspace", help="workspace slug (if you are in several)")
    p = argparse.ArgumentParser(
        prog="cmdop", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="CMDOP: reach your machines through the control plane.")
    p.add_argument("--version", action="version", version=f"cmdop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text,
                              epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    command("login", "log in with the device flow (prints a URL and a code)",
            "cmdop login --server https://cmdop.example.com --ca site-ca.pem")
    command("logout", "revoke this login on the server and forget it", "cmdop logout")
    machines = command("machines", "list the workspace's machines", "cmdop machines --json")
    machines.add_argument("--json", action="store_true", help="JSON instead of a table")
    connect = command("connect", "an interactive terminal on a machine (Enter ~ . detaches)",
                      "cmdop connect web1")
    connect.add_argument("machine", help="hostname or machine id")
    run = command("exec", "run a command, stream its output, exit with its exit code",
                  "cmdop exec web1 -- df -h /")
    run.add_argument("machine", help="hostname or machine id")
    run.add_argument("argv", nargs="+", metavar="CMD", help="the command (after --)")
    run.add_argument("--timeout", type=int, default=600, help="seconds (1-3600, default 600)")
    cp = command("cp", "copy one file to or from a machine (HOST:PATH or SESSION:PATH)",
                 "cmdop cp web1:/etc/hostname ./hostname")
    cp.add_argument("source")
    cp.add_argument("target")
    sessions = command("sessions", "list your sessions", "cmdop sessions")
    sessions.add_argument("--json", action="store_true", help="JSON instead of a table")
    join = command("join", "attach to a session you take part in",
                   "cmdop join s_abc123 --observe")
    join.add_argument("session")
    join.add_argument("--observe", action="store_true", help="watch only; send no keys")
    audit = command("audit", "export the workspace's audit log",
                    "cmdop audit export --since 2026-11-01 --format jsonl")
    audit.add_argument("action", choices=["export"])
    audit.add_argument("--since", required=True,
                       help="ISO date/time, or an age such as 30m, 12h, 7d")
    audit.add_argument("--until", help="ISO date/time or an age (default: now)")
    audit.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    return p


def parse_when(text: str) -> str:
    """``7d``/``12h``/``30m`` ago, or an ISO 8601 date/time (UTC if it has no offset)."""
    age = re.fullmatch(r"(\d+)([mhd])", text)
    if age:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[age.group(2)]
        when = datetime.now(UTC) - timedelta(**{unit: int(age.group(1))})
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise AgentError(f"--since/--until: {text!r} is not an ISO date/time or an age "
                             "like 7d") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.isoformat()


def _dispatch(args: argparse.Namespace) -> int:
    from . import commands

    if args.command == "login":
        return commands.login(args.server, args.ca, args.workspace)
    api = commands.open_api(args.server, args.ca, args.workspace)
    try:
        if args.command == "logout":
            return commands.logout(api)
        if args.command == "machines":
            return commands.machines(api, args.json)
        if args.command == "sessions":
            return commands.sessions(api, args.json)
        if args.command == "exec":
            return commands.run(api, args.machine, " ".join(args.argv), args.timeout)
        if args.command == "connect":
            return commands.connect(api, args.machine)
        if args.command == "join":
            return commands.join(api, args.session, args.observe)
        if args.command == "cp":
            return commands.copy(api, args.source, args.target)
        until = parse_when(args.until) if args.until else None
        sys.stdout.buffer.write(api.audit_export(parse_when(args.since), until, args.format))
        return 0
    finally:
        api.close()


def explain(exc: AgentError) -> str:
    """One line for the person: what failed and what to do."""
    if isinstance(exc, ServerError):
        if exc.status == 403:
            return f"refused: {exc.detail}"
        if exc.status == 429:
            wait = f"{exc.retry_after:g} s" if exc.retry_after is not None else "a while"
            return f"rate limited by the control plane; try again in {wait}"
        if exc.status == 404:
            return f"not found: {exc.detail}"
        if exc.status >= 500:
            return f"the control plane failed ({exc.status} {exc.code}); try again later"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return one_line_errors("cmdop", lambda: _dispatch(args), explain)


if __name__ == "__main__":
    sys.exit(main())
