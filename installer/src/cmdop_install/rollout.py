"""`cmdop-install agents rollout SITE`: install or upgrade the agents in batches, with a gate.

Canaries first, then batches. After each batch every agent of it must report to the control
plane with the new version from a new process (``fleet_status``: version, online, boot id)
within ``health_timeout``; an agent that does not is rolled back to the release it ran
before and must come back online on it. When the failures exceed ``max_fail`` (or any
canary fails) the rollout stops and the hosts not reached are left untouched.

Resumable: the plan and every host's release before the rollout are kept in
``SITE_DIR/rollout.json``, written before each batch starts. A rerun skips the agents that
already run the new version and are online (it does not restart them), and rolls a host back
to the release recorded *before* the interrupted run, not to whatever it runs now.
"""

from __future__ import annotations

import fcntl
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cmdop_install import agent_releases, bundle, manage
from cmdop_install.deploy import deploy_site, preflight
from cmdop_install.errors import UserError
from cmdop_install.fsutil import write_atomic
from cmdop_install.runner import run_deploy, with_host_data
from cmdop_install.sitedir import SiteDir
from cmdop_install.status import read_fleet, record_deploy

STATE_FILE = "rollout.json"
RECORD_KEYS = {"version", "status", "hosts", "started"}
ROLLBACK_DEPLOY = "cmdop_install.deploys.agent:rollback"
POLL_SECONDS = 2.0
# the agent deploy's operations that (re)start the agent process
RESTARTS = ("Restart the agent", "Agent enabled and running")


@dataclass
class HostOutcome:
    name: str
    before: str | None  # release before the rollout (None: no agent yet)
    after: str | None = None
    result: str = "untouched"
    detail: str = ""


@dataclass
class Plan:
    version: str
    batches: list[list[str]]
    canaries: int  # how many of batches[0] are canaries (0: no canary batch)
    allowed_failures: int


@dataclass
class Outcome:
    version: str
    hosts: dict[str, HostOutcome]
    stopped: str | None = None  # why the rollout stopped early
    resumed: bool = False
    batches: list[list[str]] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [h.name for h in self.hosts.values() if h.result.startswith("failed")]


def count_or_percent(value: str, total: int, option: str, minimum: int) -> int:
    """``"3"`` -> 3, ``"25%"`` -> 25 % of ``total``; a count below ``minimum`` is refused, a
    percentage rounds up to at least ``minimum`` (rounds down when ``minimum`` is 0)."""
    text = value.strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 <= percent <= 100:
                raise ValueError
            share = total * percent / 100
            return max(math.ceil(share) if minimum else int(share), minimum)
        number = int(text)
        if number < minimum:
            raise ValueError
        return number
    except ValueError:
        raise UserError(
            f"{option} {value!r}: give a count of at least {minimum} (e.g. 2) or a "
            "percentage up to 100% (e.g. 25%)"
        ) from None


def make_plan(
    todo: list[str], total: int, version: str, batch_size: str, canary: int, max_fail: str
) -> Plan:
    size = count_or_percent(batch_size, total, "--batch-size", minimum=1)
    allowed = count_or_percent(max_fail, total, "--max-fail", minimum=0)
    if canary < 0:
        raise UserError("--canary: give 0 or more hosts")
    canaries = min(canary, len(todo))
    batches = [todo[:canaries]] if canaries else []
    rest = todo[canaries:]
    batches += [rest[i : i + size] for i in range(0, len(rest), size)]
    return Plan(version, batches, canaries, allowed)


class Rollout:
    def __init__(
        self,
        site: SiteDir,
        echo: Callable[[str], None],
        health_timeout: float,
        bundle_file: Path | None = None,
    ) -> None:
        self.site = site
        self.bundle_file = bundle_file
        self.site_dir = site.path
        self.echo = echo
        self.health_timeout = health_timeout
        self.inventory = site.inventory
        self.agents = [h.name for h in self.inventory.groups["agents"]]
        if not self.agents:
            raise UserError(f"{self.site_dir}/inventory.py: no hosts in the agents group")
        if not self.inventory.groups["control_plane"]:
            raise UserError(
                f"{self.site_dir}/inventory.py: no control_plane host to check agents against"
            )
        self.state_path = self.site_dir / STATE_FILE
        self.hostnames: dict[str, str] = {}  # inventory name -> the host's own name

    # ---------------------------------------------------------------- reading the fleet

    def probe(self) -> tuple[dict[str, tuple[str | None, str]], dict[str, dict]]:
        """One round over the agents and the control plane (``preflight``: each answers and
        runs Debian 12): per agent host its current release (None: no agent yet) and its
        hostname, and the control plane's view of the fleet."""
        control_plane = self.inventory.groups["control_plane"][0].name
        per_agent = {
            "current": agent_releases.CURRENT_RELEASE_COMMAND,
            "hostname": manage.HOSTNAME_COMMAND,
        }
        fleet = {"fleet": manage.fleet_status_command(self.site.name)}
        own = {**per_agent, **fleet} if control_plane in self.agents else fleet
        probe = preflight(self.inventory, list(dict.fromkeys([*self.agents, control_plane])),
                          facts=per_agent, host_facts={control_plane: own})
        found = {}
        for name in self.agents:
            facts = probe.hosts[name].facts
            current = facts.get("current", "").strip()
            found[name] = (current or None, facts.get("hostname", "") or name)
        return found, manage.parse_fleet(probe.hosts[control_plane].facts.get("fleet", ""))

    def fleet(self) -> dict[str, dict]:
        return read_fleet(self.site)

    # ---------------------------------------------------------------- the run

    def run(self, version: str | None, batch_size: str, canary: int, max_fail: str) -> Outcome:
        make_plan([], len(self.agents), "", batch_size, canary, max_fail)  # options valid?
        with bundle.opened(self.site.config, self.bundle_file) as offline:
            release = (offline.agent_release(version) if offline
                       else agent_releases.find(self.site_dir, version))
            return self._run(release, batch_size, canary, max_fail)

    def _run(self, release, batch_size: str, canary: int, max_fail: str) -> Outcome:
        on_hosts, fleet = self.probe()
        self.hostnames = {name: hostname for name, (_, hostname) in on_hosts.items()}
        record = self.load_state()
        if record and (record["version"] != release.version or record["status"] == "complete"):
            record = None  # another release's rollout, or a finished one: start afresh
        resumed = record is not None
        before = {name: current for name, (current, _) in on_hosts.items()}
        if record is not None:
            # the release each host ran before the interrupted run started
            before.update({n: h["before"] for n, h in record["hosts"].items() if n in before})
        outcome = Outcome(
            release.version,
            {name: HostOutcome(name, before[name]) for name in self.agents},
            resumed=resumed,
        )
        todo = []
        for name in self.agents:
            if on_hosts[name][0] == release.version and self.healthy(fleet, name, release.version):
                outcome.hosts[name].after = release.version
                outcome.hosts[name].result = "already on it"
            else:
                todo.append(name)
        plan = make_plan(todo, len(self.agents), release.version, batch_size, canary, max_fail)
        outcome.batches = plan.batches
        if record is not None:
            self.echo(
                f"resuming the rollout of {release.version} started {record['started']}: "
                f"{len(self.agents) - len(todo)} of {len(self.agents)} agent(s) already on it"
            )
        started = record["started"] if record is not None else _now()
        failures = 0
        for index, batch in enumerate(plan.batches):
            canary_batch = index == 0 and plan.canaries > 0
            self.save_state(release.version, started, outcome, "running")
            label = "canary" if canary_batch else f"batch {index + 1 - bool(plan.canaries)}"
            self.echo(f"{label}: {', '.join(batch)} -> {release.version}")
            failed, fleet = self.upgrade(batch, release, fleet, outcome, preflighted=index == 0)
            if failed:
                failures += len(failed)
                self.roll_back(failed, outcome, fleet)
                if canary_batch:
                    outcome.stopped = "a canary failed"
                elif failures > plan.allowed_failures:
                    outcome.stopped = (
                        f"{failures} failure(s), more than --max-fail allows "
                        f"({plan.allowed_failures})"
                    )
                if outcome.stopped:
                    break
        self.save_state(
            release.version, started, outcome, "stopped" if outcome.stopped else "complete"
        )
        return outcome

    def upgrade(self, batch: list[str], release, fleet, outcome: Outcome,
                preflighted: bool) -> tuple[list[str], dict[str, dict]]:
        """Switch ``batch`` to ``release`` and wait for each agent to report it; the names
        of those that failed (their outcome says why) and the fleet as read after the
        batch. ``preflighted``: the rollout's probe has just checked these hosts."""
        boots = {name: self.machine(fleet, name).get("boot_id") for name in batch}
        try:
            result = deploy_site(self.site, limit=batch, agent_release=release,
                                 bundle_file=self.bundle_file, preflighted=preflighted)
        except UserError as exc:
            for name in batch:
                outcome.hosts[name].result = "failed"
                outcome.hosts[name].detail = exc.message
            return list(batch), self.fleet()
        failed, waiting = [], {}
        for name in batch:
            host = result.hosts.get(name)
            if host is None or name in result.failed:
                failed.append(name)
                outcome.hosts[name].result = "failed"
                outcome.hosts[name].detail = (host.error if host else None) or "deploy failed"
                continue
            restarted = any(op.changed and any(r in op.name for r in RESTARTS) for op in host.ops)
            waiting[name] = boots[name] if restarted else None
        unhealthy, fleet = self.wait_healthy(waiting, release.version)
        for name in waiting:
            if name in unhealthy:
                failed.append(name)
                outcome.hosts[name].result = "failed"
                outcome.hosts[name].detail = unhealthy[name]
            else:
                outcome.hosts[name].after = release.version
                outcome.hosts[name].result = (
                    "upgraded" if outcome.hosts[name].before else "installed"
                )
        return failed, fleet

    def roll_back(self, names: list[str], outcome: Outcome, fleet: dict[str, dict]) -> None:
        """Each failed host back to the release it ran before the rollout, and online on it
        (``fleet``: the control plane's view, read after the batch)."""
        targets = {n: before for n in names if (before := outcome.hosts[n].before)}
        back = list(targets)
        for name in names:
            if name not in targets:
                outcome.hosts[name].detail += "; no earlier release to go back to (new install)"
        if not back:
            return
        boots = {n: self.machine(fleet, n).get("boot_id") for n in back}
        groups = with_host_data(
            self.inventory.pyinfra_groups(), {n: {"cmdop_rollback_to": targets[n]} for n in back}
        )
        self.echo(f"rolling back: {', '.join(f'{n} -> {targets[n]}' for n in back)}")
        result = run_deploy(groups, ROLLBACK_DEPLOY, limit=back)
        record_deploy(self.site_dir, result.changes, result.failed)  # status: the last deploy
        waiting = {}
        for name in back:
            host = result.hosts[name]
            if name in result.failed:
                outcome.hosts[name].detail += f"; rollback failed: {host.error}"
                continue
            restarted = any(op.changed for op in host.ops)
            waiting[name] = boots[name] if restarted else None
        for versions in {targets[n] for n in waiting}:
            group = {n: b for n, b in waiting.items() if targets[n] == versions}
            unhealthy, _ = self.wait_healthy(group, versions)
            for name in group:
                if name in unhealthy:
                    outcome.hosts[
                        name
                    ].detail += f"; rolled back to {versions} but {unhealthy[name]}"
                else:
                    outcome.hosts[name].after = versions
                    outcome.hosts[name].detail += f"; rolled back to {versions}, online"

    def wait_healthy(
        self, hosts: dict[str, str | None], version: str
    ) -> tuple[dict[str, str], dict[str, dict]]:
        """Wait until each host's agent reports ``version``, online, from a process other than
        boot id ``hosts[name]`` (when not None). Returns name -> why, for those that did not,
        and the fleet as last read (read at least once)."""
        deadline = time.monotonic() + self.health_timeout
        pending = dict(hosts)
        why: dict[str, str] = {}
        while True:
            fleet = self.fleet()
            for name in list(pending):
                machine = self.machine(fleet, name)
                if self.healthy(fleet, name, version) and (
                    pending[name] is None or machine.get("boot_id") != pending[name]
                ):
                    del pending[name]
                    why.pop(name, None)
                elif not machine:
                    why[name] = "the control plane does not know this agent"
                elif machine.get("agent_version") != version:
                    why[name] = f"it still reports {machine.get('agent_version') or 'nothing'}"
                elif not machine.get("online"):
                    why[name] = "it is offline"
                else:
                    why[name] = "no heartbeat from the restarted agent"
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
        late = {n: f"{why.get(n, 'no report')} after {self.health_timeout:.0f} s" for n in pending}
        return late, fleet

    def machine(self, fleet: dict[str, dict], name: str) -> dict:
        return manage.machine_of(fleet, self.hostnames.get(name, name))

    def healthy(self, fleet: dict[str, dict], name: str, version: str) -> bool:
        machine = self.machine(fleet, name)
        return bool(machine.get("online")) and machine.get("agent_version") == version

    # ---------------------------------------------------------------- the record

    def load_state(self) -> dict | None:
        if not self.state_path.exists():
            return None
        try:
            record = json.loads(self.state_path.read_text())
        except ValueError:
            record = None
        if not isinstance(record, dict) or not RECORD_KEYS <= record.keys():
            raise UserError(f"{self.state_path}: not a rollout record (delete it to start afresh)")
        return record

    def save_state(self, version: str, started: str, outcome: Outcome, status: str) -> None:
        record = {
            "version": version,
            "started": started,
            "updated": _now(),
            "status": status,
            "stopped": outcome.stopped,
            "batches": outcome.batches,
            "hosts": {
                n: {"before": h.before, "after": h.after, "result": h.result, "detail": h.detail}
                for n, h in outcome.hosts.items()
            },
        }
        write_atomic(self.state_path, (json.dumps(record, indent=1) + "\n").encode(), 0o600)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SiteLock:
    """One deploy, rollout or rotation per site at a time (a lock file in the site folder)."""

    def __init__(self, site_dir: Path) -> None:
        self.path = Path(site_dir) / ".rollout.lock"

    def __enter__(self) -> SiteLock:
        if not self.path.parent.is_dir():
            raise UserError(f"{self.path.parent}: no such site folder")
        self.fd = open(self.path, "w")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fd.close()
            raise UserError(f"{self.path.parent}: another deploy, rollout or rotate of this "
                            "site is running; wait for it to end, then rerun") from None
        return self

    def __exit__(self, *exc) -> None:
        self.fd.close()


def summary_lines(outcome: Outcome) -> list[str]:
    width = max(len(n) for n in outcome.hosts)
    lines = [f"{'HOST':<{width}}  {'BEFORE':<10} {'NOW':<10} RESULT"]
    for h in outcome.hosts.values():
        result = h.result + (f": {h.detail.lstrip('; ')}" if h.detail else "")
        lines.append(
            f"{h.name:<{width}}  {h.before or '-':<10} {h.after or h.before or '-':<10} {result}"
        )
    return lines
