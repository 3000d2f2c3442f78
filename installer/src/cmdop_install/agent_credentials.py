"""Agents' machine credentials in `cmdop-install rotate` (the name ``agent_credentials``).

The control plane hands each agent its new credential in a heartbeat reply, the agent's own
authenticated channel; the agent stores it and confirms by using it, and from then on its
old one is refused (docs/agent-protocol.md, credential handover). So no credential ever
passes through this machine, `secrets.enc` or SSH: the installer only opens, watches,
closes or cancels the handovers, with ``machine_credentials`` on the first control-plane
host, and says which agent stands where. The state lives with the control plane (each
machine's handover deadline), so a rerun resumes: opening again keeps the deadline.

In the rotation's phases: ``switched`` opens the handovers and waits a bounded time for the
online agents; ``retired`` (``--finish``) closes them, and an agent that has not confirmed
by then lapses (refused until an Admin issues it a credential) and is named; a rollback
from ``switched`` cancels them (agents that have not confirmed keep their old credential).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from cmdop_install import manage
from cmdop_install.errors import UserError
from cmdop_install.runner import read_facts
from cmdop_install.sitedir import SiteDir

NAME = "agent_credentials"
# How long an agent away at the switch has to come back and take its new credential (the
# control plane's own bound is 30 days); `rotate --finish` ends it sooner.
GRACE_SECONDS = 7 * 24 * 3600
# Online agents heartbeat every 30 s: four chances to take and confirm the new credential
WAIT_SECONDS = 120.0
POLL_SECONDS = 5.0
WAITING = ("handover_open", "handover_issued")
Echo = Callable[[str], None]


def read_machines(site: SiteDir, action: str = "") -> dict[str, dict]:
    """Every machine's credential state by its host name, after ``action`` (``open``,
    ``close``, ``cancel`` or nothing: read only)."""
    first = site.inventory.groups["control_plane"][0].name
    command = manage.machine_credentials_command(site.name, action, GRACE_SECONDS)
    result = read_facts(site.inventory.pyinfra_groups(), {"machines": command}, limit=[first])
    if result.hosts[first].error:
        raise UserError(f"{first}: cannot reach the control plane's machine credentials: "
                        f"{result.hosts[first].error}")
    return manage.parse_fleet(result.hosts[first].facts.get("machines", ""))


def open_handovers(site: SiteDir, echo: Echo, sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic) -> dict[str, dict]:
    """Open (or resume) the handovers, wait up to ``WAIT_SECONDS`` for every online agent to
    confirm its new credential, and say where each agent stands. The machines' rows."""
    machines = read_machines(site, "open")
    deadline = clock() + WAIT_SECONDS
    while _waiting_online(machines) and clock() < deadline:
        sleep(POLL_SECONDS)
        machines = read_machines(site)
    for line in describe(machines):
        echo(line)
    return machines


def close_handovers(site: SiteDir, echo: Echo) -> dict[str, dict]:
    """End the grace: an agent that has not confirmed lapses; each lapsed one is named."""
    machines = read_machines(site, "close")
    for line in describe(machines):
        echo(line)
    return machines


def cancel_handovers(site: SiteDir, echo: Echo) -> None:
    machines = read_machines(site, "cancel")
    echo(f"agent credentials: handovers cancelled ({_count(machines, 'current')} agents on "
         "their current credential)")


def describe(machines: dict[str, dict]) -> list[str]:
    """One line for the fleet, then one per agent that is not on a confirmed credential."""
    lines = [f"agent credentials: {_count(machines, 'current')} of "
             f"{sum(m['credential'] != 'oauth' for m in machines.values())} agents on their "
             "current credential"]
    for host, m in sorted(machines.items()):
        until = m.get("handover_until")
        if m["credential"] in WAITING and not m["online"]:
            lines.append(f"  {host}: offline; takes its new credential when it comes back "
                         f"before {until}, else `rotate --finish` leaves it refused")
        elif m["credential"] in WAITING:
            lines.append(f"  {host}: online but has not taken its new credential yet (an "
                         f"agent too old for handovers keeps its old one until {until})")
        elif m["credential"] == "lapsed":
            lines.append(f"  {host}: LAPSED: its agent is refused until an Admin issues it a "
                         f"new credential (POST /api/v1/workspaces/SLUG/machines/"
                         f"{m.get('machine_id')}/credential, into its credential.json)")
    return lines


def _waiting_online(machines: dict[str, dict]) -> bool:
    return any(m["online"] and m["credential"] in WAITING for m in machines.values())


def _count(machines: dict[str, dict], state: str) -> int:
    return sum(m["credential"] == state for m in machines.values())


def age_findings(site: SiteDir, machines: dict[str, dict],
                 now: datetime | None = None) -> list[str]:
    """``check``'s warning when agents' machine credentials are older than ``[rotation]
    max_age_days``: how many, of the machines that have one (a device-flow machine's OAuth
    tokens rotate on every refresh; a lapsed one is refused already and `status` names it)."""
    limit = site.config["rotation"]["max_age_days"]
    now = now or datetime.now(UTC)
    held = [m for m in machines.values() if m["credential"] not in ("oauth", "lapsed")]
    ages = [(now - datetime.fromisoformat(m["rotated_at"])).days for m in held
            if m.get("rotated_at")]
    old = [age for age in ages if age > limit]
    if not old:
        return []
    return [f"warning: agents: {len(old)} of {len(held)} machines have a credential older than "
            f"[rotation] max_age_days = {limit} (the oldest {max(old)} days): "
            f"`cmdop-install rotate {site.path} {NAME}`"]
