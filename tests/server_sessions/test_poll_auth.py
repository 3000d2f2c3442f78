"""The long-poll's credential check (agent_api.auth, ``machine_pooled``): its one-query
fast path accepts exactly the current credential of a machine that may call, and leaves
every other case to the full check every agent call makes, which then decides as before."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cmdop_server import credentials
from cmdop_server.agent_api import auth
from cmdop_server.errors import ApiError
from cmdop_server.machines.models import Machine
from django.test import RequestFactory
from django.utils import timezone

from tests.server_sessions.helpers import keyed_workspace

pytestmark = [pytest.mark.integration,
              pytest.mark.django_db(databases=["default", "audit"])]


def _full(raw: str) -> int | None:
    """The machine the full check lets call with ``raw`` (None: refused)."""
    request = RequestFactory().get("/api/agent/v1/work")
    try:
        caller = auth._machine_caller(request, raw)
    except ApiError:
        return None
    return None if caller is None else caller.machine.pk


def _fast(raw: str) -> int | None:
    caller = auth._current_holder(raw)
    return None if caller is None else caller.machine.pk


@pytest.fixture
def machine():
    enrolled = keyed_workspace("pollauth", "Poll auth")["machine"]
    return Machine.unscoped.get(public_id=enrolled["machine_id"]), enrolled["credential"]


def test_the_current_credential_is_accepted_as_by_the_full_check(machine):
    row, raw = machine
    assert _fast(raw) == _full(raw) == row.pk
    # a handover open but not yet due changes nothing for the current credential
    Machine.unscoped.filter(pk=row.pk).update(
        credential_handover_until=timezone.now() + timedelta(days=1))
    assert _fast(raw) == _full(raw) == row.pk
    # the caller's other fields are read from the row when used
    assert auth._current_holder(raw).machine.hostname == row.hostname


@pytest.mark.parametrize("case", ["unknown", "disabled", "lapsed", "superseded", "pending",
                                  "not_a_machine_credential"])
def test_every_other_case_goes_to_the_full_check(machine, case):
    row, raw = machine
    other = "mc_" + "x" * 43
    if case == "unknown":
        raw = other
    elif case == "disabled":
        Machine.unscoped.filter(pk=row.pk).update(disabled_at=timezone.now())
    elif case == "lapsed":
        Machine.unscoped.filter(pk=row.pk).update(
            credential_handover_until=timezone.now() - timedelta(seconds=1))
    elif case == "superseded":
        Machine.unscoped.filter(pk=row.pk).update(
            credential_hash=credentials.sha256_hex(other),
            previous_credential_hash=credentials.sha256_hex(raw))
    elif case == "pending":
        Machine.unscoped.filter(pk=row.pk).update(
            pending_credential_hash=credentials.sha256_hex(other),
            credential_handover_until=timezone.now() + timedelta(days=1))
        raw = other
    else:
        raw = "not-a-machine-credential"
    assert _fast(raw) is None
    # what the full check decides: a pending credential is confirmed (and then current),
    # every other one is refused
    assert _full(raw) == (row.pk if case == "pending" else None)
