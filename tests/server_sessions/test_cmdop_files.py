"""``cmdop cp`` through the session file API (operator both ways, observer refused a write),
``cmdop sessions`` and ``cmdop audit export``, against the real control plane and agent."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.server_sessions.cmdop_user import CmdopUser, one_line_failure

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]


@pytest.fixture
def agent(control_plane, real_agent):
    agent = real_agent(control_plane)
    agent.start()
    return agent


def user(agent, tmp_path, key: str, name: str) -> CmdopUser:
    person = CmdopUser(tmp_path / name, agent.server, agent.ca, api_key=key)
    person.dot.mkdir(parents=True, mode=0o700)
    config = person.dot / "config.yaml"
    config.write_text(f"server: {agent.server}\nca: {agent.ca}\n")
    config.chmod(0o600)
    return person


def test_cp_both_ways_as_operator(agent, tmp_path) -> None:
    owner = user(agent, tmp_path, agent.key, "owner")
    local = tmp_path / "app.conf"
    local.write_bytes(b"listen 8080;\n\x00binary\xff\n")
    remote = tmp_path / "remote" / "app.conf"
    remote.parent.mkdir()
    host = agent.machine.hostname
    up = owner.run("cp", str(local), f"{host}:{remote}")
    assert up.returncode == 0, up.stderr
    assert remote.read_bytes() == local.read_bytes()  # the agent runs on this machine
    remote.write_bytes(b"changed on the machine\n")
    back = tmp_path / "back"
    back.mkdir()
    down = owner.run("cp", f"{agent.machine.public_id}:{remote}", str(back))
    assert down.returncode == 0, down.stderr
    assert (back / "app.conf").read_bytes() == b"changed on the machine\n"
    one_line_failure(owner.run("cp", f"{host}:relative/path", str(back)), "absolute")
    one_line_failure(owner.run("cp", f"{host}:{tmp_path}/missing", str(back)),
                     "the agent refused")


def test_observer_may_not_write_a_file(agent, tmp_path) -> None:
    sid, _ = agent.open_session()
    member, member_api = agent.member("member")
    agent.api.call("POST", f"/sessions/{sid}/participants",
                   {"user_id": member.pk, "role": "observer"})
    observer = user(agent, tmp_path, member_api.key, "observer")
    listed = json.loads(observer.run("sessions", "--json").stdout)
    assert [(s["session_id"], s["role"]) for s in listed] == [(sid, "observer")]
    local = tmp_path / "payload"
    local.write_text("not allowed\n")
    target = tmp_path / "written-by-observer"
    one_line_failure(observer.run("cp", str(local), f"{sid}:{target}"),
                     "refused: An observer may not file_write")
    assert not target.exists()
    operator = user(agent, tmp_path, agent.key, "operator")
    assert operator.run("cp", str(local), f"{sid}:{target}").returncode == 0
    assert target.read_text() == "not allowed\n"


def test_audit_export_jsonl_and_csv(agent, tmp_path) -> None:
    owner = user(agent, tmp_path, agent.key, "owner")
    assert owner.run("exec", agent.machine.hostname, "--", "true").returncode == 0
    lines = owner.run("audit", "export", "--since", "1h", "--format", "jsonl")
    assert lines.returncode == 0, lines.stderr
    events = [json.loads(x)["event"] for x in lines.stdout.decode().splitlines()]
    assert "session.create" in events and "command.executed" in events
    table = owner.run("audit", "export", "--since", "2000-01-01", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(table.stdout.decode())))
    assert {"session.create", "command.executed"} <= {r["event"] for r in rows}
    one_line_failure(owner.run("audit", "export", "--since", "yesterday"), "--since")
    member, member_api = agent.member("member")
    one_line_failure(user(agent, tmp_path, member_api.key, "member").run(
        "audit", "export", "--since", "1h"), "refused:")
