"""cmdop-agent command line: enroll, login, run. Errors are one line and a non-zero exit."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import one_line_errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmdop-agent",
        description="CMDOP agent: connects out to the control plane (never listens) and runs "
                    "terminal sessions, commands and file work as the user running it.")
    p.add_argument("--version", action="version", version=f"cmdop-agent {__version__}")
    p.add_argument("--config", type=Path, help="config file (default: "
                   "$CMDOP_AGENT_CONFIG or ~/.config/cmdop-agent/agent.toml)")
    p.add_argument("--allow-root", action="store_true",
                   help="run even as root (every command would then run as root)")
    sub = p.add_subparsers(dest="command", required=True)
    enroll = sub.add_parser("enroll", help="enroll this machine with a join token")
    enroll.add_argument("--token", required=True, help="join token from the dashboard; "
                        "'-' reads it from stdin (keeps it out of ps and shell history)")
    login = sub.add_parser("login",
                           help="enroll with the OAuth device flow (prints a URL and a code)")
    login.add_argument("--workspace", help="workspace slug (if your user is in several)")
    run = sub.add_parser("run", help="connect to the control plane and do work until SIGTERM")
    run.add_argument("-v", "--verbose", action="store_true")
    return p


def _dispatch(args: argparse.Namespace) -> int:
    from .config import default_config_path, load_config
    from .privileges import refuse_root

    refuse_root(args.allow_root)
    config = load_config(args.config or default_config_path())
    if args.command == "enroll":
        from .api import enroll_with_join_token

        from_stdin = args.token == "-"  # noqa: S105 - "-" means stdin, not a secret
        token = sys.stdin.readline().strip() if from_stdin else args.token
        cred = enroll_with_join_token(config, token)
        print(f"enrolled as machine {cred['machine_id']}; credential in {config.credential_file}")
        return 0
    if args.command == "login":
        from .api import login_with_device_flow

        cred = login_with_device_flow(config, show=lambda line: print(line, flush=True),
                                      workspace=args.workspace)
        print(f"logged in as machine {cred['machine_id']}")
        return 0
    from .agent import Agent
    from .api import Auth
    from .privileges import set_no_new_privs

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="cmdop-agent: %(message)s")
    set_no_new_privs()
    Agent(config, Auth(config)).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return one_line_errors("cmdop-agent", lambda: _dispatch(args))


if __name__ == "__main__":
    sys.exit(main())
