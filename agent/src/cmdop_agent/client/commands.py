"""What each ``cmdop`` command does; the CLI parses, these act (tests call them directly)."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

from ..errors import AgentError
from ..files import ensure_private_dir
from ..oauth import device_flow
from . import settings as where
from .terminal import DETACHED, attach
from .userapi import CLIENT_ID, Session, UserApi, https_client, keeper, with_session


def open_api(server: str | None, ca: Path | None, workspace: str | None) -> UserApi:
    settings, login = where.resolve(server, ca, workspace)
    return UserApi(settings, login)


def login(server: str | None, ca: Path | None, workspace: str | None) -> int:
    settings, _ = where.resolve(server, ca, workspace)
    settings = where.Settings(settings.server, settings.ca_file, None, settings.workspace,
                              settings.home)
    # fail before the device flow if the login could not be stored
    ensure_private_dir(settings.home)
    ensure_private_dir(settings.key_dir)
    client = https_client(settings)
    try:
        tokens = device_flow(client, CLIENT_ID, "api", "log in to CMDOP",
                             lambda line: print(line, flush=True))
    finally:
        client.close()
    record = {"kind": "oauth", "server": settings.server,
              "ca": str(settings.ca_file) if settings.ca_file else "system",
              "workspace": settings.workspace}
    keeper(settings, record).store(tokens)
    api = UserApi(settings, record)
    try:
        me = api.call("GET", "/me")
        rows = api.workspaces()
        if record["workspace"] is None and len(rows) == 1:
            record["workspace"] = rows[0]["slug"]
            where.save_login(settings.login_file, record)
    finally:
        api.close()
    user = me.get("username") if isinstance(me, dict) else "?"
    print(f"logged in to {settings.server} as {user}"
          + (f" (workspace {record['workspace']})" if record["workspace"] else
             f"; name a workspace with --workspace ({', '.join(r['slug'] for r in rows)})"))
    return 0


def logout(api: UserApi) -> int:
    if api.tokens is None:
        raise AgentError("no login to end (an API key is in use: revoke it in the dashboard)")
    api.tokens.revoke()
    api.settings.login_file.unlink()
    print(f"logged out of {api.settings.server}")
    return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _show(rows: list[dict], as_json: bool, table: list[list[str]]) -> int:
    print(json.dumps(rows, indent=1) if as_json else _table(table))
    return 0


def machines(api: UserApi, as_json: bool) -> int:
    rows = api.machines()
    table = [["HOSTNAME", "MACHINE", "STATUS", "OS", "LAST SEEN"]]
    for m in rows:
        status = "disabled" if m.get("disabled") else "online" if m.get("online") else "offline"
        table.append([m["hostname"], m["machine_id"], status, m.get("os") or "",
                      str(m.get("last_seen_at") or "never")])
    return _show(rows, as_json, table)


def sessions(api: UserApi, as_json: bool) -> int:
    rows = api.sessions()
    table = [["SESSION", "HOSTNAME", "STATUS", "ROLE", "CREATED"]]
    table += [[s["session_id"], s["hostname"], s["status"], s.get("role") or "",
               str(s["created_at"])] for s in rows]
    return _show(rows, as_json, table)


def exit_status(code: object) -> int:
    """A shell's view of an exit code: a negative one (killed by signal N) is 128 + N."""
    if not isinstance(code, int):
        return 255
    return 128 - code if code < 0 else code


def run(api: UserApi, machine: str, command: str, timeout: int) -> int:
    if not 1 <= timeout <= 3600:
        raise AgentError("--timeout must be 1 to 3600 seconds")

    def show(stream: str, data: bytes) -> None:
        out = sys.stderr.buffer if stream == "stderr" else sys.stdout.buffer
        out.write(data)
        out.flush()

    def work(session: Session) -> int:
        result = session.command(command, timeout, show)
        show("stdout", base64.b64decode(result.get("stdout_b64") or ""))
        show("stderr", base64.b64decode(result.get("stderr_b64") or ""))
        if result.get("timed_out"):
            print(f"cmdop: the command timed out after {timeout} s", file=sys.stderr)
        elif result.get("truncated"):
            print("cmdop: output cap reached: the command was stopped", file=sys.stderr)
        return exit_status(result.get("exit_code"))

    return with_session(api, machine, work)


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 80, 24
    return size.columns, size.lines


def connect(api: UserApi, machine: str) -> int:
    cols, rows = _terminal_size()
    session = Session.open(api, machine, cols, rows)
    code = attach(session, observe=False)
    if code == DETACHED:
        session.detach()
        print(f"\r\ncmdop: detached; the session runs on: cmdop join {session.id}",
              file=sys.stderr)
        return 0
    return exit_status(code)


def join(api: UserApi, session_id: str, observe: bool) -> int:
    session = Session(api, session_id)
    info = session.info()
    observe = observe or info.get("role") != "operator"
    if not observe and info.get("status") == "background":
        session.attach()
    code = attach(session, observe)
    if code == DETACHED:
        if not observe:
            session.detach()
        print("\r\ncmdop: detached", file=sys.stderr)
        return 0
    return exit_status(code)


def _remote(spec: str) -> tuple[str, str] | None:
    """``HOST:PATH`` or ``SESSION:PATH`` (an absolute path); None for a local path."""
    head, sep, path = spec.partition(":")
    if not sep or "/" in head or not head:
        return None
    if not path.startswith("/"):
        raise AgentError(f"{spec}: the remote path must be absolute")
    return head, path


def copy(api: UserApi, source: str, target: str) -> int:
    src, dst = _remote(source), _remote(target)
    if (src is None) == (dst is None):
        raise AgentError("cp copies between this machine and one remote HOST:PATH")
    remote = src or dst
    assert remote is not None
    name, path = remote

    def work(session: Session) -> int:
        if src is not None:
            result = session.read_file(path)
            if result.get("truncated"):
                raise AgentError(f"{path} is larger than one read can carry; nothing written")
            local = Path(target)
            if local.is_dir():
                local = local / Path(path).name
            local.write_bytes(base64.b64decode(result.get("data_b64") or ""))
            print(f"{result.get('bytes', 0)} bytes from {source}", file=sys.stderr)
        else:
            result = session.write_file(path, Path(source).read_bytes())
            print(f"{result.get('bytes', 0)} bytes to {target}", file=sys.stderr)
        return 0

    if name.startswith("s_"):
        return work(Session(api, name))
    return with_session(api, name, work)
