"""Every agent to a new machine credential without going offline (issue 14): the real
control plane (gunicorn asgi over TLS, Postgres, Redis) hands the real agent its new
credential in a heartbeat reply; the agent stores it (0600) and confirms by using it, its
session goes on, and from then on the old credential is refused (401) and a replay of it is
audited naming the machine. An agent away during the handover takes it when it comes back
within the grace; past the grace it is reported as lapsed, never left to fail unseen."""

from __future__ import annotations

import io
import json
import stat
from datetime import timedelta

import pytest
from cmdop_install import agent_credentials
from cmdop_install.sitedir import SiteDir
from cmdop_server import credentials
from cmdop_server.audit.models import AuditEvent
from cmdop_server.machines import actions
from cmdop_server.machines.models import Machine
from django.core.management import call_command
from django.utils import timezone

from tests.server_sessions.helpers import enroll, make_workspace, owner_membership
from tests.support.control_plane import ApiError, UserApi, until
from tests.support.sites import TEST_KEY, make_site

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"], transaction=True)]

# The agents here heartbeat every 2 s (the control plane tells them, from the machine row),
# so that a handover is taken within seconds rather than the default 30.
HEARTBEAT = 2
HANDOVER_WAIT = 60.0  # generous: a loaded two-core machine, several heartbeats


def machine_credentials(ws, *flags: str) -> dict[str, dict]:
    """The management command the installer runs: every machine's line, by host name."""
    out = io.StringIO()
    call_command("machine_credentials", "--workspace", ws.slug, *flags, stdout=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all("mc_" not in line for line in out.getvalue().splitlines())
    return {row["hostname"]: row for row in rows}


def stored_credential(agent) -> str:
    return json.loads(agent.home.credential.read_text())["credential"]


def agent_call(cp, credential: str) -> UserApi:
    api = UserApi(cp.url, cp.pki.ca, credential, "")
    api.base = "/api/agent/v1"
    return api


def heartbeat_with(cp, credential: str, boot_id: str = "b_probe") -> dict:
    api = agent_call(cp, credential)
    try:
        return api.call("POST", "/heartbeat", {"version": "0.1.0", "boot_id": boot_id})
    finally:
        api.close()


def refusal(cp, credential: str) -> int:
    with pytest.raises(ApiError) as refused:
        heartbeat_with(cp, credential)
    return refused.value.status


def audit_rows(event: str, **data) -> list[AuditEvent]:
    rows = AuditEvent.objects.filter(event=event).order_by("id")
    return [r for r in rows if all(r.data.get(k) == v for k, v in data.items())]


def fast_agent(real_agent, cp):
    """An enrolled agent whose control plane asks for a heartbeat every ``HEARTBEAT`` s."""
    agent = real_agent(cp)
    enrolled = agent.enroll()
    assert enrolled.returncode == 0, enrolled.stderr
    Machine.objects.in_workspace(agent.ws).update(heartbeat_interval=HEARTBEAT)
    return agent


def handed_over(agent, machine: Machine) -> AuditEvent:
    return until(lambda: (audit_rows("machine.credential.handover",
                                     machine=machine.public_id) or [None])[0],
                 timeout=HANDOVER_WAIT,
                 what=f"the agent to confirm its new credential; log:\n{agent.log_text()}")


def test_a_running_agent_moves_to_a_new_credential_and_keeps_its_session(control_plane,
                                                                          real_agent):
    agent = fast_agent(real_agent, control_plane)
    machine = agent.start()
    sid, out = agent.open_session()
    agent.api.type(sid, b"echo before-$((6*7))\n")
    out.wait_for(b"before-42")
    old = stored_credential(agent)
    boot = Machine.unscoped.get(pk=machine.pk).boot_id

    opened = machine_credentials(agent.ws, "--open", "--grace", "600")
    assert opened[machine.hostname]["credential"] in ("handover_open", "handover_issued")
    handed_over(agent, machine)

    new = stored_credential(agent)
    assert new != old and new.startswith("mc_")
    mode = stat.S_IMODE(agent.home.credential.stat().st_mode)
    assert mode == 0o600, oct(mode)
    row = Machine.unscoped.get(pk=machine.pk)
    assert row.credential_hash == credentials.sha256_hex(new)
    assert row.previous_credential_hash == credentials.sha256_hex(old)
    assert row.pending_credential_hash is None and row.credential_handover_until is None
    assert row.boot_id == boot  # the same agent process: it never restarted or re-enrolled
    assert machine_credentials(agent.ws)[machine.hostname]["credential"] == "current"
    assert len(audit_rows("machine.credential.handover.issue", machine=machine.public_id)) >= 1

    # the session goes on through the handover, on the new credential
    mark = len(out.data)
    agent.api.type(sid, b"echo after-$((6*7))\n")
    out.wait_for(b"after-42", start=mark)

    # the old credential is refused, and a replay of it is audited as one, naming the machine
    before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    assert refusal(control_plane, old) == 401
    replay = until(lambda: AuditEvent.objects.filter(
        id__gt=before, event="auth.machine", success=False).first(), what="the replay's row")
    assert replay.reason == "superseded_machine_credential"
    assert replay.data["machine"] == machine.public_id and replay.workspace_id == agent.ws.pk
    assert heartbeat_with(control_plane, new, boot)["heartbeat_interval"] == HEARTBEAT
    assert agent.proc is not None and agent.proc.poll() is None, agent.log_text()
    assert agent.stop() == 0, agent.log_text()


def test_an_agent_away_during_the_handover_takes_it_when_it_comes_back(control_plane,
                                                                        real_agent):
    agent = fast_agent(real_agent, control_plane)
    machine = agent.start()
    assert agent.stop() == 0, agent.log_text()
    old = stored_credential(agent)

    state = machine_credentials(agent.ws, "--open", "--grace", "600")[machine.hostname]
    assert state["credential"] == "handover_open" and state["handover_until"]
    agent.start()
    handed_over(agent, machine)
    assert stored_credential(agent) != old
    assert refusal(control_plane, old) == 401
    assert machine_credentials(agent.ws)[machine.hostname]["credential"] == "current"


def test_a_rerun_keeps_the_deadline_and_an_unconfirmed_agent_lapses_visibly(control_plane,
                                                                             real_agent):
    agent = fast_agent(real_agent, control_plane)
    machine = agent.start()
    assert agent.stop() == 0, agent.log_text()
    old = stored_credential(agent)

    first = machine_credentials(agent.ws, "--open", "--grace", "600")[machine.hostname]
    again = machine_credentials(agent.ws, "--open", "--grace", "6000")[machine.hostname]
    assert again["handover_until"] == first["handover_until"]  # resumed, not extended
    # within the grace the old credential still works (the agent has not taken the new one)
    assert heartbeat_with(control_plane, old, "b_away")["heartbeat_interval"] == HEARTBEAT

    closed = machine_credentials(agent.ws, "--close")[machine.hostname]
    assert closed["credential"] == "lapsed"
    assert refusal(control_plane, old) == 401
    row = until(lambda: (audit_rows("auth.machine", machine=machine.public_id) or [None])[-1],
                what="the lapsed credential's refusal")
    assert row.reason == "machine_credential_handover_lapsed"
    # a later --open leaves it lapsed: only an Admin's new credential brings it back
    assert machine_credentials(agent.ws, "--open")[machine.hostname]["credential"] == "lapsed"

    membership = owner_membership(agent.ws, agent.owner)
    _, fresh = actions.do_rotate_machine_credential(membership, machine.public_id)
    assert machine_credentials(agent.ws)[machine.hostname]["credential"] == "current"
    assert heartbeat_with(control_plane, fresh)["heartbeat_interval"] == HEARTBEAT


def test_an_agent_that_cannot_store_its_new_credential_keeps_the_old_one(control_plane,
                                                                         real_agent):
    """The credential file cannot be replaced (its temp name is taken): the agent keeps
    working on the old credential and takes a fresh one once it can store it."""
    agent = fast_agent(real_agent, control_plane)
    machine = agent.start()
    old = stored_credential(agent)
    assert agent.proc is not None
    blocker = agent.home.credential.with_name(
        f".{agent.home.credential.name}.{agent.proc.pid}.tmp")
    blocker.mkdir()
    machine_credentials(agent.ws, "--open", "--grace", "600")
    until(lambda: len(audit_rows("machine.credential.handover.issue",
                                 machine=machine.public_id)) >= 2,
          timeout=HANDOVER_WAIT, what=f"two handover attempts; log:\n{agent.log_text()}")
    assert "could not store the new machine credential" in agent.log_text(tail=None)
    assert stored_credential(agent) == old and not audit_rows(
        "machine.credential.handover", machine=machine.public_id)
    assert agent.proc.poll() is None, agent.log_text()

    blocker.rmdir()
    handed_over(agent, machine)
    assert stored_credential(agent) != old
    assert refusal(control_plane, old) == 401
    assert agent.proc.poll() is None, agent.log_text()


def test_a_rollback_cancels_the_handover_and_the_old_credential_stays(control_plane):
    ws, owner = make_workspace()
    enrolled = enroll(ws, owner)
    old, host = enrolled["credential"], Machine.objects.in_workspace(ws).get().hostname
    machine_credentials(ws, "--open")
    sent = heartbeat_with(control_plane, old)["credential"]  # handed over, never used
    assert sent.startswith("mc_") and sent != old
    assert machine_credentials(ws)[host]["credential"] == "handover_issued"

    assert machine_credentials(ws, "--cancel")[host]["credential"] == "current"
    assert "credential" not in heartbeat_with(control_plane, old)
    assert refusal(control_plane, sent) == 401
    fleet = io.StringIO()
    call_command("fleet_status", "--workspace", ws.slug, stdout=fleet)
    assert json.loads(fleet.getvalue())["credential"] == "current"


def test_check_counts_the_machines_whose_credential_is_older_than_max_age(tmp_path,
                                                                          monkeypatch):
    """`cmdop-install check` reads these same lines (agent_credentials.read_machines): the
    age of each machine's credential is its last rotation, else its enrollment."""
    ws, owner = make_workspace()
    old, fresh, rotated = (enroll(ws, owner, hostname=h) for h in ("old", "fresh", "rotated"))
    now = timezone.now()
    Machine.unscoped.filter(public_id=old["machine_id"]).update(
        enrolled_at=now - timedelta(days=120))
    # enrolled long ago, its credential rotated since: only the rotation counts
    Machine.unscoped.filter(public_id=rotated["machine_id"]).update(
        enrolled_at=now - timedelta(days=300), credential_rotated_at=now - timedelta(days=3))
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site = SiteDir.load(make_site(tmp_path / "site"))
    assert agent_credentials.age_findings(site, machine_credentials(ws)) == [
        "warning: agents: 1 of 3 machines have a credential older than [rotation] "
        f"max_age_days = 90 (the oldest 120 days): `cmdop-install rotate {site.path} "
        "agent_credentials`"]
    Machine.unscoped.filter(public_id=old["machine_id"]).update(credential_rotated_at=now)
    assert agent_credentials.age_findings(site, machine_credentials(ws)) == []
