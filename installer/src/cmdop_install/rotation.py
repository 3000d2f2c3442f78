"""`cmdop-install rotate`: renew secrets in recorded, resumable phases.

Every rotation walks the same phases, all its secrets together (one deploy per phase, to
the control-plane and Postgres hosts only):

- ``staged``: the new values are generated into ``secrets.enc`` (nothing uses them yet);
- ``admitted``: the servers accept the new value as well as the old one (the idle
  blue/green Postgres login gets its password, as a SCRAM verifier; a Redis user gets its
  second password in users.acl, applied with ACL LOAD, no restart);
- ``switched``: the control plane uses the new values (``systemctl reload``: new gunicorn
  workers, the old ones finish their requests); Django signs with the new key and still
  verifies the old one (``SECRET_KEY_FALLBACKS``), the old Postgres login can still log in;
- ``retired`` (``--finish``, after the grace period): the old values are destroyed (the
  old login's password is NULL, the fallback key is gone, Redis users lose the old password).

The internal PKI walks the same phases with files in pki/ instead of values in
``secrets.enc`` (``pki.stage``/``switch``/``drop``): ``pki_leaves`` stages a new key and
certificate for every leaf from the site CA and switches the daemons to them (each reloads:
nginx, PostgreSQL and the control plane on a reload, Redis on CONFIG SET of its TLS files);
``pki_ca`` stages a new CA and every leaf signed by it, admits the new CA into every trust
bundle on every host (agents included: they re-read theirs), switches the leaves, and at
``--finish`` takes the old CA out of the bundles and deletes its key.

The phase the site is being brought to and whether it got there are recorded in
``rotation.json`` before and after each deploy, so an interrupted run resumes by deploying
that phase again (a deploy changes only what differs). ``--rollback`` walks the phases
back, one deploy each, from any phase before ``retired``; a Django key it takes back stays
a fallback (what it signed still verifies) until the next rotation. A new value is always
written to ``secrets.enc`` before the record names a phase that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cmdop_install import agent_credentials, pki, rotation_state
from cmdop_install.deploy import deploy_site
from cmdop_install.errors import UserError
from cmdop_install.rotation_state import (
    PG_LOGINS,
    PHASES,
    PKI_CA,
    PKI_LEAVES,
    REDIS_USERS,
    ROTATABLE,
    idle_role,
)
from cmdop_install.runner import read_facts
from cmdop_install.sitedir import SiteDir

PG = "postgres_password"  # the app's blue/green logins, rotated as one
AGENTS = agent_credentials.NAME  # each agent's machine credential, handed over by the plane
# keys whose replaced value keeps verifying what it signed (SECRET_KEY_FALLBACKS): a rollback
# keeps the abandoned new key verifying as well, or every session used while it signed
# (Django re-signs a session's auth hash with the current key) would be signed out
SIGNING_KEYS = ("django_secret_key",)
PKI = (PKI_LEAVES, PKI_CA)  # files in pki/, not values in secrets.enc
# the hosts each phase's deploy reaches: the secrets and leaf certificates live there,
# nothing else changes; a trust bundle is on every host, agents' included
HOST_GROUPS = ["postgres", "redis", "control_plane"]
ALL_GROUPS = [*HOST_GROUPS, "agents"]
# gunicorn's workers from before a reload finish what they hold (parked long-polls, open
# terminals) for up to its graceful_timeout (30 s), with the values they started with: a
# rollback takes the abandoned values away only once they are gone (half a second per check)
DRAIN_CHECKS = 90
_WHAT = {
    "staged": "new values generated into secrets.enc (nothing uses them yet)",
    "admitted": "the servers accept the new values too: the idle Postgres login gets its "
    "password, Redis users both of theirs (ACL LOAD)",
    "switched": "the control plane reloads with the new values; the old ones still verify",
    "retired": "the old values are destroyed: old key dropped, old login's password NULL, "
    "old Redis passwords removed",
}
_PKI_WHAT = {
    "staged": "new leaf keys and certificates issued into pki/ (nothing uses them yet)",
    "switched": "every daemon reloads with its new certificate (no restart)",
    "retired": "the replaced leaf keys are deleted from pki/",
}
_CA_WHAT = {
    "staged": "a new CA and every leaf signed by it issued into pki/ (nothing uses them yet)",
    "admitted": "every trust bundle lists the old and the new CA, on every host",
    "switched": "every daemon reloads with its certificate from the new CA",
    "retired": "the old CA leaves every trust bundle; its key and leaves are deleted",
}
_AGENTS_WHAT = {
    "switched": "each agent takes a new machine credential in a heartbeat reply; its old one "
    "is refused once it has used the new one",
    "retired": "agents that have not taken theirs are refused until an Admin issues one",
}
Echo = Callable[[str], None]


def resolve(names: tuple[str, ...], every: bool) -> list[str]:
    """The rotation names for the command line's secret names (or ``--all``), in order."""
    if every:
        names = (*(n for n, why in ROTATABLE.items() if why is None), AGENTS, PKI_CA)
    chosen: list[str] = []
    for name in names:
        # not in secrets.enc: the control plane hands agents theirs; pki/ holds the others
        if name in (AGENTS, *PKI):
            chosen += [] if name in chosen else [name]
            continue
        if name not in ROTATABLE:
            raise UserError(f"unknown secret {name!r} (`cmdop-install secrets list` names them)")
        if ROTATABLE[name] is not None:
            raise UserError(f"secret {name}: {ROTATABLE[name]}")
        rotation = PG if name in PG_LOGINS else name
        if rotation not in chosen:
            chosen.append(rotation)
    if PKI_CA in chosen and PKI_LEAVES in chosen:  # a CA rotation reissues every leaf
        chosen.remove(PKI_LEAVES)
    return chosen


class Rotation:
    """One site's rotation: its record in ``rotation.json`` and the phase steps."""

    def __init__(self, site: SiteDir, echo: Echo, dry_run: bool = False) -> None:
        self.site = site
        self.echo = echo
        self.dry_run = dry_run
        self.state = rotation_state.load(site.path)
        # each control-plane host's gunicorn workers from before this run's reload
        self.old_workers: dict[str, str] = {}

    @property
    def record(self) -> dict | None:
        return self.state["rotation"]

    def start_or_resume(self, names: list[str]) -> None:
        """Bring the site to ``switched`` for ``names`` (or the recorded rotation's)."""
        record = self.record
        if record is None:
            if not names:
                raise UserError("no rotation in progress: name the secrets to rotate, or --all")
            record = self._new_record(names)
        elif record["direction"] != "forward":
            raise UserError(f"a rollback of {', '.join(record['names'])} is in progress: rerun "
                            f"`cmdop-install rotate {self.site.path} --rollback`")
        elif names and sorted(names) != sorted(record["names"]):
            raise UserError(
                f"a rotation of {', '.join(record['names'])} is in progress (phase "
                f"{record['phase']}): rerun `cmdop-install rotate {self.site.path}` to resume "
                "it, or --rollback / --finish first")
        elif record["phase"] == "retired":
            raise UserError(f"the rotation of {', '.join(record['names'])} is finishing: "
                            f"rerun `cmdop-install rotate {self.site.path} --finish`")
        self._forward(record, "switched")
        if not self.dry_run:
            self.echo(f"rotated {', '.join(record['names'])}: the new values are in use and "
                      "the old ones still verify; after the grace period run "
                      f"`cmdop-install rotate {self.site.path} --finish`")

    def finish(self) -> None:
        record = self._recorded("--finish")
        if record["direction"] != "forward":
            raise UserError("a rollback is in progress: rerun it with --rollback")
        if record["phase"] != "retired" and (record["phase"], record["done"]) != (
                "switched", True):
            raise UserError(f"the rotation of {', '.join(record['names'])} has not switched "
                            f"yet (phase {record['phase']}): rerun `cmdop-install rotate "
                            f"{self.site.path}` first, then --finish after the grace period")
        self._forward(record, "retired")
        if not self.dry_run:
            self.state["rotation"] = None
            rotation_state.save(self.site.path, self.state)
            self.echo(f"finished: the old values of {', '.join(record['names'])} are "
                      "destroyed and refused")

    def rollback(self) -> None:
        record = self._recorded("--rollback")
        if record["phase"] == "retired":
            raise UserError("the old values are already destroyed (phase retired): nothing to "
                            f"roll back to; complete it with `cmdop-install rotate "
                            f"{self.site.path} --finish`")
        record["direction"] = "back"
        while self.record is not None:
            self._step_back(self.record)
        if not self.dry_run:
            self.echo(f"rolled back: {', '.join(record['names'])} use their old values again")

    def _recorded(self, flag: str) -> dict:
        if self.record is None:
            raise UserError(f"no rotation in progress in {self.site.path} (nothing to {flag})")
        return self.record

    def _new_record(self, names: list[str]) -> dict:
        return {"names": names, "phase": "staged", "done": False, "direction": "forward",
                "started": _now(), "updated": _now(), "history": [],
                "active_before": self.site.config["postgres"]["active_role"]}

    def _forward(self, record: dict, until: str) -> None:
        start = PHASES.index(record["phase"]) + (1 if record["done"] else 0)
        for phase in PHASES[start: PHASES.index(until) + 1]:
            if self.dry_run:
                self._plan(phase, record["names"])
                continue
            self._enter(record, phase)

    def _enter(self, record: dict, phase: str) -> None:
        store, names = self.site.store, record["names"]
        if phase == "retired":
            self._save(record, phase, done=False)  # recorded first: no way back from here
        for name in _secrets(names):
            secret = self._pg_idle_secret(record) if name == PG else name
            if phase == "staged":
                store.stage(secret)
            elif phase == "admitted" and name == PG:
                store.promote(secret, keep_previous=False)  # the idle login had no password
            elif phase == "switched" and name != PG:
                store.promote(secret)
            elif phase == "retired" and name != PG:
                store.drop_previous(secret)
        store.save()  # a new value is in secrets.enc before any phase uses it
        self._pki_files(names, phase)  # as are new keys in pki/
        if phase == "switched" and PG in names:
            self.state["active_role"] = self._pg_idle_role(record)
            self.site.config["postgres"]["active_role"] = self.state["active_role"]
        self._save(record, phase, done=False)
        self.site.secrets_changed()
        if PKI_CA in names:
            pki.write_bundle(self.site.path, rotation_state.ca_admitted(self.site.path))
        if _deploys(names, phase):
            self._deploy(phase, _groups(names, phase))
        if AGENTS in names and phase in ("switched", "retired"):
            self._hand_over(phase)
        self._save(record, phase, done=True)
        self.echo(f"phase {phase}: done ({_what(names, phase)})")

    def _pki_files(self, names: list[str], phase: str) -> None:
        """pki/ for entering ``phase``: stage the new files, switch to them, or delete the
        replaced ones (each step resumes where a cut one stopped)."""
        kind = _pki(names)
        if kind is None:
            return
        site = self.site
        if phase == "staged":
            pki.stage(site.path, site.config, site.inventory, site.store.pki_passphrase(),
                      new_ca=kind == PKI_CA)
        elif phase == "switched":
            pki.switch(site.path)
        elif phase == "retired":
            pki.drop(site.path, pki.PREVIOUS)

    def _step_back(self, record: dict) -> None:
        phase = record["phase"]
        if self.dry_run:
            where = (", ".join(self._hosts(_groups(record["names"], phase)))
                     if _deploys(record["names"], phase) else "this machine only")
            self.echo(f"would roll back phase {phase} on {where}")
            index = PHASES.index(phase)
            if index == 0:
                self.state["rotation"] = None
            else:
                record["phase"] = PHASES[index - 1]
            return
        store, names = self.site.store, record["names"]
        for name in _secrets(names):
            # no-op unless promoted (also by a switch cut short); a Redis user's new password
            # stays staged and admitted until the step back from admitted takes it away
            if name in REDIS_USERS:
                store.restage(name)
            elif name != PG:
                store.demote(name, keep_newer=name in SIGNING_KEYS)
        if phase == "staged":
            for name in _secrets(names):
                store.drop_staged(self._pg_idle_secret(record) if name == PG else name)
            store.save()
            if _pki(names):
                pki.drop(self.site.path, pki.NEXT)
            self.state["rotation"] = None
            rotation_state.save(self.site.path, self.state)
            if PKI_CA in names:
                pki.write_bundle(self.site.path, with_next=False)
            self.echo("phase staged: undone (the new values are deleted)")
            return
        store.save()
        if phase == "switched" and _pki(names):
            pki.switch_back(self.site.path)  # the replaced files are current again
        back = PHASES[PHASES.index(phase) - 1]
        if phase == "switched" and PG in names:
            self.state["active_role"] = record["active_before"]
            self.site.config["postgres"]["active_role"] = record["active_before"]
        if phase == "switched" and AGENTS in names:  # before the record leaves switched
            self._stopped(phase, lambda: agent_credentials.cancel_handovers(self.site, self.echo))
        if phase == "switched" and _admits(names):  # the reload below makes them old
            self.old_workers = self._workers()
        if phase == "admitted" and self.old_workers:
            self._drained()
        self._save(record, back, done=False)
        self.site.secrets_changed()
        if PKI_CA in names:
            pki.write_bundle(self.site.path, rotation_state.ca_admitted(self.site.path))
        if _deploys(names, phase):
            self._deploy(back, _groups(names, phase))
        self._save(record, back, done=True)
        self.echo(f"phase {phase}: undone")

    def _workers(self) -> dict[str, str]:
        """Each control-plane host's gunicorn worker PIDs, space-separated."""
        command = ("m=$(systemctl show -p MainPID --value cmdop-server.service); "
                   'if [ "${m:-0}" -gt 0 ]; then pgrep -P "$m"; fi; true')
        result = read_facts(self.site.inventory.pyinfra_groups(), {"workers": command},
                            limit=["control_plane"])
        return {name: " ".join(p for p in host.facts.get("workers", "").split() if p.isdigit())
                for name, host in result.hosts.items() if not host.error}

    def _drained(self) -> None:
        """Wait until the workers in ``old_workers`` have exited: one still using a value
        about to be taken away would fail the requests it is finishing."""
        checks = {host: {"left": f"for i in $(seq {DRAIN_CHECKS}); do left=''; for p in {pids}; "
                                 'do kill -0 "$p" 2>/dev/null && left="$left $p"; done; '
                                 '[ -z "$left" ] && break; sleep 0.5; done; echo $left'}
                  for host, pids in self.old_workers.items() if pids}
        self.old_workers = {}
        if not checks:
            return
        self.echo("waiting for the control plane's workers from before the reload to finish "
                  f"(up to {DRAIN_CHECKS // 2} s)")
        result = read_facts(self.site.inventory.pyinfra_groups(), {}, limit=list(checks),
                            host_facts=checks)
        for name, host in sorted(result.hosts.items()):
            left = host.error or host.facts.get("left", "").strip()
            if left:
                self.echo(f"warning: {name}: workers from before the reload still running "
                          f"({left}); their requests may fail once the old values are gone")

    def _pg_idle_role(self, record: dict) -> str:
        return idle_role(record["active_before"])

    def _pg_idle_secret(self, record: dict) -> str:
        return f"postgres_password_{self._pg_idle_role(record)}"

    def _save(self, record: dict, phase: str, done: bool) -> None:
        record.update(phase=phase, done=done, updated=_now())
        if done:
            record["history"].append([phase, record["updated"]])
        self.state["rotation"] = record
        rotation_state.save(self.site.path, self.state)

    def _hand_over(self, phase: str) -> None:
        """Agents' credentials: opened (and waited for) at the switch, closed at --finish."""
        if phase == "switched":
            self._stopped(phase, lambda: agent_credentials.open_handovers(self.site, self.echo))
        else:
            self._stopped(phase, lambda: agent_credentials.close_handovers(self.site, self.echo))

    def _stopped(self, phase: str, step: Callable[[], object]) -> None:
        try:
            step()
        except UserError as exc:
            raise UserError(f"rotation stopped in phase {phase}: {exc.message}; fix it and "
                            f"rerun `cmdop-install rotate {self.site.path}` to resume (or "
                            "--rollback)", exc.exit_code) from None

    def _deploy(self, phase: str, groups: list[str]) -> None:
        resume = (f"fix it and rerun `cmdop-install rotate {self.site.path}` to resume "
                  "(or --rollback)")
        try:
            result = deploy_site(self.site, limit=groups)
        except UserError as exc:  # e.g. a host unreachable: preflight changed nothing
            raise UserError(f"rotation stopped in phase {phase}: {exc.message}; {resume}",
                            exc.exit_code) from None
        if result.failed:
            raise UserError(f"rotation stopped in phase {phase}: the deploy failed on "
                            f"{', '.join(result.failed)}; {resume}")

    def _hosts(self, groups: list[str]) -> list[str]:
        inventory = self.site.inventory
        return sorted({h.name for g in groups for h in inventory.groups[g]})

    def _plan(self, phase: str, names: list[str]) -> None:
        touches = ("this machine only" if not _deploys(names, phase)
                   else ", ".join(self._hosts(_groups(names, phase))))
        what = [f"{_WHAT[phase]} [{touches}]"] if _secrets(names) else []
        kind = _pki(names)
        if kind is not None and phase in _PKI_TABLES[kind]:
            what.append(f"{_PKI_TABLES[kind][phase]} [{touches}]")
        if AGENTS in names and phase in _AGENTS_WHAT:
            first = self.site.inventory.groups["control_plane"][0].name
            what.append(f"{_AGENTS_WHAT[phase]} [{first}]")
        self.echo(f"would enter phase {phase}: {'; '.join(what) or 'nothing to do'}")


def _secrets(names: list[str]) -> list[str]:
    """The names that are values in secrets.enc (agents' credentials and pki/ are not)."""
    return [n for n in names if n != AGENTS and n not in PKI]


def _pki(names: list[str]) -> str | None:
    """The PKI rotation among ``names`` (``resolve`` keeps at most one)."""
    return next((n for n in names if n in PKI), None)


_PKI_TABLES = {PKI_LEAVES: _PKI_WHAT, PKI_CA: _CA_WHAT}


def _deploys(names: list[str], phase: str) -> bool:
    """Whether entering (or stepping back from) ``phase`` changes a host: never at staged;
    at admitted only where a server accepts a second value or a bundle a second CA; the
    leaves' --finish deletes files on this machine only."""
    if phase == "staged":
        return False
    if phase == "admitted":
        return _admits(names) or PKI_CA in names
    if phase == "retired":
        return bool(_secrets(names)) or PKI_CA in names
    return bool(_secrets(names)) or _pki(names) is not None


def _groups(names: list[str], phase: str) -> list[str]:
    """The host groups a phase's deploy reaches: every host when a trust bundle changes."""
    return ALL_GROUPS if PKI_CA in names and phase in ("admitted", "retired") else HOST_GROUPS


def _what(names: list[str], phase: str) -> str:
    parts = [_WHAT[phase]] if _secrets(names) else []
    kind = _pki(names)
    if kind is not None and phase in _PKI_TABLES[kind]:
        parts.append(_PKI_TABLES[kind][phase])
    if AGENTS in names and phase in _AGENTS_WHAT:
        parts.append(_AGENTS_WHAT[phase])
    return "; ".join(parts) or "nothing to do"


def _admits(names: list[str]) -> bool:
    """Whether the admitted phase changes a server: only Postgres and Redis admit a second
    value (the others have nothing to accept it before their clients use it)."""
    return PG in names or any(n in REDIS_USERS for n in names)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
