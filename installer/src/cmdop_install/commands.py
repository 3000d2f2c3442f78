"""The site commands. Thin: each loads the site once (``SiteDir``) and calls one module.

The modules are imported inside each command, so that ``cmdop-install --help`` and every
other command start without loading what they do not use (pyinfra, gevent, jinja2,
cryptography).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cmdop_install import options
from cmdop_install.errors import UserError

site_dir_arg = options.site_dir_arg


def _echo(as_json: bool, line: str) -> None:
    """A human line: on stdout, or on stderr when stdout carries the --json document."""
    click.echo(line, err=as_json)


def _document(doc: dict) -> None:
    """The --json document: the only thing written to stdout (docs/cli.md has each schema)."""
    click.echo(json.dumps(doc, indent=2))


@click.command()
@site_dir_arg
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to keep the secrets key (default: ~/.config/cmdop-install/keys/; "
                   "never inside SITE_DIR).")
def init(site_dir: Path, key_file: Path | None) -> None:
    """Create SITE_DIR (site.toml, inventory.py, secrets.enc, pki/) or complete it.

    Running it again changes nothing that exists: no secret is regenerated and only
    missing, expiring or renamed certificates are issued.

    \b
    Example:
      cmdop-install init mysite
    """
    from cmdop_install.siteinit import init_site

    report = init_site(site_dir, key_file)
    for name in report.created:
        click.echo(f"created {site_dir / name}")
    if report.generated_secrets:
        click.echo(f"generated secrets: {', '.join(report.generated_secrets)}")
    if report.issued_certs:
        click.echo(f"issued certificates: {', '.join(report.issued_certs)}")
    click.echo(f"secrets key: {report.key_source} (keep it apart from {site_dir})")
    if not (report.created or report.generated_secrets or report.issued_certs):
        click.echo("nothing to do: the site is complete")


@click.group()
def secrets() -> None:
    """List, show or pin the site's secrets (values only on `show NAME`).

    \b
    Example:
      cmdop-install secrets list mysite
    """


def _store(site_dir: Path):
    from cmdop_install.sitedir import SiteDir

    return SiteDir.load(site_dir).store


@secrets.command("list")
@site_dir_arg
@options.as_json
def secrets_list(site_dir: Path, as_json: bool) -> None:
    """Names, creation time, age, source and rotatability (or why not) of every secret —
    never values.

    \b
    Example:
      cmdop-install secrets list mysite --json
    """
    from cmdop_install.rotation_state import OTHER_SECRETS, ROTATABLE

    rows = _store(site_dir).listing()
    if as_json:
        _document({
            "secrets": [{**r, "rotatable": not ROTATABLE[r["name"]],
                         "why_not": ROTATABLE[r["name"]] or None} for r in rows],
            "other": [{"name": name, "why_not": why} for name, why in OTHER_SECRETS.items()],
        })
        return
    width = max(len(name) for name in [*ROTATABLE, *OTHER_SECRETS])
    click.echo(f"{'NAME':<{width}}  {'CREATED':<20}  {'AGE':>7}  {'SOURCE':<9}  ROTATE")
    for r in rows:
        rotate = ROTATABLE[r["name"]] or "yes (cmdop-install rotate)"
        click.echo(f"{r['name']:<{width}}  {r['created']:<20}  {r['age']:>7}  "
                   f"{r['source']:<9}  {rotate}")
    for name, why in OTHER_SECRETS.items():
        click.echo(f"{name:<{width}}  {'-':<20}  {'-':>7}  {'-':<9}  {why}")


@secrets.command("show")
@site_dir_arg
@click.argument("name")
def secrets_show(site_dir: Path, name: str) -> None:
    """Print the value of secret NAME (and nothing else).

    \b
    Example:
      cmdop-install secrets show mysite owner_password
    """
    click.echo(_store(site_dir).get(name))


@secrets.command("set")
@site_dir_arg
@click.argument("name")
def secrets_set(site_dir: Path, name: str) -> None:
    """Pin secret NAME to a value read from stdin (never from argv); it wins from now on.

    Weak values are refused and nothing is changed.

    \b
    Example:
      printf '%s\\n' "$VALUE" | cmdop-install secrets set mysite redis_password_app
    """
    if sys.stdin.isatty():
        value = click.prompt(f"value for {name}", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    store = _store(site_dir)
    store.pin(name, value)
    store.save()
    click.echo(f"pinned {name}; run `cmdop-install render` and deploy to apply it")


@click.command()
@site_dir_arg
@click.option("--host", default=None, help="Render one host only (its inventory name).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: OUT/<host>/<path> plus OUT/manifest.json (replaced whole).")
def render(site_dir: Path, host: str | None, out: Path) -> None:
    """Write exactly the files each host would receive, and a manifest of modes/owners.

    The site is checked first, as deploy checks it; certificates the inventory now needs
    are issued. Nothing is written unless every file rendered.

    \b
    Example:
      cmdop-install render mysite --out rendered --host db1
    """
    from cmdop_install.render_folder import render_site
    from cmdop_install.sitedir import SiteDir

    site = SiteDir.load(site_dir)
    try:
        manifest = render_site(site, out, host)
    finally:
        _echo_issued(site)
    for name, files in manifest["hosts"].items():
        click.echo(f"{name}: {len(files)} files")
    click.echo(f"manifest: {out / 'manifest.json'}")


@click.command()
@site_dir_arg
@options.as_json
@options.verbosity("Also each host's rendered files that were linted (path, mode, owner).")
def check(site_dir: Path, as_json: bool, verbosity: int) -> None:
    """Validate site.toml and inventory.py and lint the rendered files; exit 1 on findings.

    On a deployed site it also reads the agents' machine credential ages from the control
    plane's first host (a warning when older than [rotation] max_age_days).

    \b
    Example:
      cmdop-install check mysite --json
      cmdop-install check mysite --verbose
      cmdop-install check mysite --quiet
    """
    from cmdop_install.check import check_site, machine_credential_findings
    from cmdop_install.progress import QUIET, VERBOSE
    from cmdop_install.sitedir import SiteDir

    site = SiteDir.load(site_dir)
    findings = check_site(site)
    if all(f.startswith("warning:") for f in findings):
        findings += machine_credential_findings(site)
    problems = [f for f in findings if not f.startswith("warning:")]
    if as_json:
        _document({"ok": not problems, "problems": problems,
                   "warnings": [f for f in findings if f.startswith("warning:")]})
    else:
        for finding in findings:
            if verbosity > QUIET or finding in problems:
                click.echo(finding)
    if problems:
        raise UserError(f"check: {len(problems)} problem(s) found", 1)
    if as_json:
        return
    if verbosity >= VERBOSE:
        for line in _linted_files(site):
            click.echo(line)
    click.echo("check: ok" + (f" ({len(findings)} warning(s))" if findings else ""))


def _linted_files(site) -> list[str]:
    """Per host, the rendered files check linted (those of a host still waiting for its
    certificates were not rendered, so they are not listed)."""
    lines = []
    for host in site.inventory.hosts():
        rendered = site.rendered(host.name)
        if rendered is None:
            continue
        lines.append(f"{host.name}: {len(rendered)} file(s) rendered and linted")
        lines += [f"    {f.mode:04o} {f.owner}:{f.group} {f.path}"
                  f"{' (secret)' if f.secret else ''}" for f in rendered]
    return lines


def _echo_issued(site, as_json: bool = False) -> None:
    if site.generated:
        _echo(as_json, f"generated secrets: {', '.join(site.generated)}")
    if site.issued:
        _echo(as_json, f"issued certificates: {', '.join(site.issued)}")


@click.command("deploy")
@site_dir_arg
@options.limit
@options.dry_run
@options.bundle
@options.as_json
@options.verbosity("Each operation with its result, as it runs and in the summary.")
def deploy(site_dir: Path, limit: tuple[str, ...], dry_run: bool, bundle_file: Path | None,
           as_json: bool, verbosity: int) -> None:
    """Converge every host of SITE_DIR: Postgres, Redis, nginx, the control plane, the agents.

    Only what differs changes; a second deploy of an unchanged site reports zero changes.
    Certificates the inventory now needs are issued first. Each host's progress shows as it
    goes (one live line per host on a terminal), then what changed: operations and files.
    --dry-run changes nothing and shows each file that would change with a unified diff
    (a secret file by name only). Secrets never appear in the output.

    \b
    Example:
      cmdop-install deploy mysite --limit control_plane --dry-run
      cmdop-install deploy mysite --bundle cmdop.bundle
      cmdop-install deploy mysite --json > deploy.json
      cmdop-install deploy mysite --verbose
      cmdop-install deploy mysite --quiet
    """
    from cmdop_install.deploy import deploy_site
    from cmdop_install.progress import QUIET, for_output
    from cmdop_install.rollout import SiteLock
    from cmdop_install.runner import reporting
    from cmdop_install.sitedir import SiteDir

    sink = for_output(sys.stderr, verbosity, as_json)
    with SiteLock(site_dir), reporting(sink):
        site = SiteDir.load(site_dir)
        try:
            result = deploy_site(site, limit=list(limit) or None, dry_run=dry_run,
                                 bundle_file=bundle_file)
        finally:
            _echo_issued(site, as_json)
    if verbosity > QUIET:
        _echo(as_json, "centrifugo: skipped (no binary in site.toml [centrifugo]); live "
              "output flows through the REST cursor API")
    for line in result.host_lines("would change" if dry_run else "changed", verbosity,
                                  diffs=dry_run):
        _echo(as_json, line)
    if as_json:
        _document({"dry_run": dry_run, "ok": not result.failed, "issued": list(site.issued),
                   **result.as_json()})
    if result.failed:
        raise UserError(
            f"deploy failed on {', '.join(result.failed)}; fix and rerun "
            "(the hosts that succeeded are consistent and will report no change)"
        )
    _echo(as_json,
          f"{'dry run: ' if dry_run else ''}{result.changes} change(s) on {len(result.hosts)} "
          "host(s)")


@click.command("status")
@site_dir_arg
@options.as_json
@options.verbosity("Also when each agent was last seen.")
def status(site_dir: Path, as_json: bool, verbosity: int) -> None:
    """Per host and component: service state, version, certificates, agents online, last deploy.

    \b
    Example:
      cmdop-install status mysite --json
      cmdop-install status mysite --verbose
      cmdop-install status mysite --quiet
    """
    from cmdop_install.progress import NORMAL, QUIET
    from cmdop_install.sitedir import SiteDir
    from cmdop_install.status import (
        CREDENTIAL_LAPSED,
        RESTART_PENDING,
        problem_lines,
        site_status,
    )

    info = site_status(SiteDir.load(site_dir))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    if verbosity == QUIET:
        problems = problem_lines(info)
        for line in problems:
            click.echo(line)
        click.echo(f"status: {len(info['hosts'])} host(s), "
                   + (f"{len(problems)} problem(s)" if problems else "every component active"))
        return
    last = info["last_deploy"]
    click.echo(
        f"site {info['site']}; last deploy: "
        + (f"{last['at']} ({last['changes']} change(s))" if last else "never")
    )
    for h in info["hosts"]:
        if "error" in h:
            click.echo(f"{h['host']} ({h['address']})  unreachable: {h['error']}")
            continue
        click.echo(f"{h['host']} ({h['address']})")
        for c in h["components"]:
            extra = ""
            if "online" in c:
                extra = "  online" if c["online"] else "  OFFLINE"
                if verbosity > NORMAL:
                    extra += f"  last seen {c['last_seen'] or 'never'}"
            if c.get("restart_pending"):
                extra = f"  {RESTART_PENDING}"
            if c.get("credential") == "lapsed":
                extra += f"  {CREDENTIAL_LAPSED}"
            click.echo(f"  {c['component']:<14} {c['state']:<10} {c['version']:<22}{extra}")
        for name, when in sorted(h["certificates"].items()):
            click.echo(f"  cert {name:<28} expires {when}")
    rotation = info["rotation"]
    if rotation:
        state = "reached" if rotation["done"] else "in progress"
        click.echo(f"rotation of {', '.join(rotation['names'])}: phase {rotation['phase']} "
                   f"{state} ({'rolling back, ' if rotation['direction'] == 'back' else ''}"
                   f"since {rotation['started']}; rerun `cmdop-install rotate` to continue)")
    click.echo("secret ages: " + ", ".join(f"{s['name']} {s['age']}" for s in info["secrets"]))
    if info["ca"]:
        ca = info["ca"]
        click.echo(f"site CA: issued {ca['issued']} ({ca['age_days']} days ago), expires "
                   f"{ca['expires']} (renewed by `cmdop-install rotate SITE pki_ca`)")
    for warning in info["warnings"]:
        click.echo(warning)


@click.command("rotate")
@site_dir_arg
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--all", "every", is_flag=True, help="Every rotatable secret (`secrets list`).")
@click.option("--finish", is_flag=True,
              help="After the grace period: destroy the old values (no rollback after it).")
@click.option("--rollback", is_flag=True, help="Back to the old values, phase by phase.")
@options.dry_run
@options.yes
def rotate(site_dir: Path, names: tuple[str, ...], every: bool, finish: bool, rollback: bool,
           dry_run: bool, yes: bool) -> None:
    """Renew secrets NAME... (or --all) in recorded, resumable phases.

    Staged, admitted, switched: the new values are in use and the old ones still verify.
    Then `--finish` (after the grace period) destroys the old values. An interrupted
    rotation resumes when rerun; `--rollback` returns to the old values until --finish.
    NAME agent_credentials (in --all) moves every agent to a new machine credential,
    handed over by the control plane; --finish refuses the agents that did not take theirs.
    NAME pki_leaves gives every leaf certificate a new key from the site CA; pki_ca (in
    --all) makes a new CA, trusted beside the old one on every host (agents included),
    then moves every leaf to it; its --finish takes the old CA out of every bundle.

    \b
    Example:
      cmdop-install rotate mysite --all --yes && cmdop-install rotate mysite --finish --yes
      cmdop-install rotate mysite agent_credentials --dry-run
      cmdop-install rotate mysite pki_ca --yes && cmdop-install rotate mysite --finish --yes
    """
    from cmdop_install.rollout import SiteLock
    from cmdop_install.rotation import Rotation, resolve
    from cmdop_install.sitedir import SiteDir

    if finish + rollback + bool(names or every) > 1:
        raise UserError("rotate: give secret names (or --all), --finish or --rollback; "
                        "one of them", 2)
    chosen = resolve(names, every)
    with SiteLock(site_dir):
        rotation = Rotation(SiteDir.load(site_dir), click.echo, dry_run)
        if not (dry_run or yes):
            what = "destroy the old values of" if finish else (
                "roll back" if rollback else "rotate")
            target = ", ".join(chosen or (rotation.record or {}).get("names", [])) or "nothing"
            click.confirm(f"{what} {target} on the hosts of {site_dir}?", abort=True)
        if finish:
            rotation.finish()
        elif rollback:
            rotation.rollback()
        else:
            rotation.start_or_resume(chosen)


@click.group()
def agents() -> None:
    """The agents of a site: roll out a release in batches.

    \b
    Example:
      cmdop-install agents rollout mysite --canary 1 --batch-size 25%
    """


@agents.command("rollout")
@site_dir_arg
@click.option("--version", default=None, help="Agent release (default: the one shipped).")
@click.option(
    "--batch-size",
    default="25%",
    show_default=True,
    metavar="N|P%",
    help="Hosts per batch after the canaries.",
)
@click.option(
    "--canary",
    default=1,
    show_default=True,
    type=int,
    metavar="N",
    help="Hosts upgraded first, alone; any canary failure stops the rollout.",
)
@click.option(
    "--max-fail",
    default="0",
    show_default=True,
    metavar="N|P%",
    help="Failures tolerated (failed hosts are rolled back either way).",
)
@click.option(
    "--health-timeout",
    default=120,
    show_default=True,
    type=click.IntRange(5, 3600),
    metavar="SECONDS",
    help="How long an agent has to report its new version.",
)
@options.bundle
@options.as_json
@options.verbosity("Each operation of each batch with its result, as it runs.")
def rollout(
    site_dir: Path,
    version: str | None,
    batch_size: str,
    canary: int,
    max_fail: str,
    health_timeout: int,
    bundle_file: Path | None,
    as_json: bool,
    verbosity: int,
) -> None:
    """Install or upgrade the agents of SITE_DIR in batches, each gated on the control plane.

    Failed hosts go back to their previous release; when failures exceed --max-fail the
    rollout stops and the rest stay untouched. Rerun the same command to resume. Each
    batch's hosts show their progress as they go (one live line per host on a terminal).

    \b
    Example:
      cmdop-install agents rollout mysite --version 0.2.0 --canary 1 --batch-size 25%
      cmdop-install agents rollout mysite --json > rollout.json
      cmdop-install agents rollout mysite --verbose
      cmdop-install agents rollout mysite --quiet
    """
    from dataclasses import asdict

    from cmdop_install.progress import QUIET, for_output
    from cmdop_install.rollout import Rollout, SiteLock, summary_lines
    from cmdop_install.runner import reporting
    from cmdop_install.sitedir import SiteDir

    def echo(line: str) -> None:
        if verbosity > QUIET:
            _echo(as_json, line)

    sink = for_output(sys.stderr, verbosity, as_json)
    with SiteLock(site_dir), reporting(sink):
        outcome = Rollout(SiteDir.load(site_dir), echo,
                          health_timeout, bundle_file).run(version, batch_size, canary, max_fail)
    for line in summary_lines(outcome):
        _echo(as_json, line)
    if as_json:
        _document({"version": outcome.version,
                   "ok": not outcome.stopped and not outcome.failed,
                   "stopped": outcome.stopped, "resumed": outcome.resumed,
                   "failed": outcome.failed, "batches": outcome.batches,
                   "hosts": [asdict(h) for h in outcome.hosts.values()]})
    if outcome.stopped:
        raise UserError(
            f"rollout of {outcome.version} stopped: {outcome.stopped}; the hosts not reached "
            "are untouched. Fix the cause and rerun to resume."
        )
    if outcome.failed:
        raise UserError(
            f"rollout of {outcome.version} finished with failed host(s) "
            f"{', '.join(outcome.failed)} (rolled back); rerun to retry them"
        )
    _echo(as_json, f"rollout of {outcome.version}: every agent runs it and is online")


@click.command("uninstall")
@site_dir_arg
@click.option(
    "--keep-data",
    is_flag=True,
    help="Keep the databases, Redis data, agent credentials and homes (deploy brings it back).",
)
@options.limit
@options.yes
@options.as_json
def uninstall(site_dir: Path, keep_data: bool, limit: tuple[str, ...], yes: bool,
              as_json: bool) -> None:
    """Remove what deploy installed on the hosts of SITE_DIR: services, code, our files, users
    and the Debian packages it installed; with --keep-data the data stays.

    The site folder itself (secrets, certificates) stays on this machine.

    \b
    Example:
      cmdop-install uninstall mysite --keep-data --yes
      cmdop-install uninstall mysite --yes --json > uninstall.json
    """
    from cmdop_install.sitedir import SiteDir
    from cmdop_install.uninstall import uninstall_site

    if not (site_dir / "site.toml").is_file():
        raise UserError(f"{site_dir}/site.toml: no such file (is {site_dir} a site folder?)")
    site = SiteDir.load(site_dir)
    if not yes:
        what = "keeping the data" if keep_data else "INCLUDING ALL DATA (databases, audit log)"
        click.confirm(f"Uninstall CMDOP from the hosts of {site_dir}, {what}?", abort=True,
                      err=as_json)
    result = uninstall_site(site, keep_data=keep_data, limit=list(limit) or None)
    for line in result.host_lines():
        _echo(as_json, line)
    if as_json:
        _document({"keep_data": keep_data, "ok": not result.failed, **result.as_json()})
    if result.failed:
        raise UserError(f"uninstall failed on {', '.join(result.failed)}; fix and rerun")
    kept = " (data kept: `cmdop-install deploy` brings the site back)" if keep_data else ""
    _echo(as_json, f"uninstalled from {len(result.hosts)} host(s){kept}")


@click.command("demo")
@click.option("--name", default="demo", show_default=True, help="Name of the demo lab.")
@click.option(
    "--site",
    "site_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sites/demo"),
    show_default=True,
    help="Where the demo site lives.",
)
def demo(name: str, site_dir: Path) -> None:
    """Deploy a whole CMDOP site onto three local lab hosts and prove it works.

    \b
    Example:
      cmdop-install demo --name demo --site sites/demo
    """
    from cmdop_install.demo import run

    run(name, site_dir)


@click.command("export-ansible")
@site_dir_arg
@click.argument("out", type=click.Path(file_okay=False, path_type=Path), metavar="OUT")
@click.option("--vault-password-file", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="ansible-vault password (made, 0600, when missing).")
@options.bundle
def export_ansible(site_dir: Path, out: Path, vault_password_file: Path,
                   bundle_file: Path | None) -> None:
    """Export SITE_DIR for roles/ and site.yml: OUT/inventory.yml and vault-encrypted host_vars.

    Then: ansible-playbook -i OUT/inventory.yml --vault-password-file FILE site.yml
    (group_vars/all.yml next to it holds the site-wide values, no secret). With --bundle
    the roles install every package from the verified bundle and nothing from the network.

    \b
    Example:
      cmdop-install export-ansible mysite ansible-out --vault-password-file vault.pass
      cmdop-install export-ansible mysite out --vault-password-file vault.pass --bundle cmdop.bundle
    """
    from cmdop_install.ansible_export import export_site

    hosts = export_site(site_dir, out, vault_password_file, bundle_file)
    click.echo(f"exported {len(hosts)} host(s) to {out}/inventory.yml "
               f"(secrets only in {out}/host_vars/, vault-encrypted)")


@click.command("backup")
@site_dir_arg
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder the archive is written to (0600).")
def backup(site_dir: Path, out: Path) -> None:
    """Back SITE_DIR up into one archive sealed with the site's key.

    The database host dumps the app and audit databases (pg_dump over the site's TLS);
    the archive holds them, the site folder without the secrets key, and a manifest of
    SHA-256 checksums. Keep the key apart from it: the archive is useless without it.

    \b
    Example:
      cmdop-install backup mysite --out /srv/backups
    """
    from cmdop_install.backup import backup_site
    from cmdop_install.rollout import SiteLock
    from cmdop_install.sitedir import SiteDir

    with SiteLock(site_dir):
        archive = backup_site(SiteDir.load(site_dir), out)
    click.echo(f"backup: {archive}")


@click.command("restore")
@site_dir_arg
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@options.yes
def restore(site_dir: Path, archive: Path, yes: bool) -> None:
    """Put a `backup` ARCHIVE's databases back onto the deployed site SITE_DIR.

    The archive is checked first (this site's key, its name and CA, every checksum); a
    refused one touches nothing. Then the control plane stops, each database is replaced
    from its dump in one transaction, the control plane starts and audit_verify must pass.
    Users, their passwords, API keys and enrolled agents' credentials come back as they were.

    \b
    Example:
      cmdop-install restore mysite /srv/backups/mysite-20260101T031500Z.cmdop-backup
    """
    import tempfile

    from cmdop_install.restore import opened, restore_site
    from cmdop_install.rollout import SiteLock
    from cmdop_install.sitedir import SiteDir

    with SiteLock(site_dir), tempfile.TemporaryDirectory(prefix="cmdop-restore-") as tmp:
        site = SiteDir.load(site_dir)
        manifest = opened(site, archive, Path(tmp))  # a refusal comes before any question
        if not yes:
            click.confirm(f"Replace the databases of {site.name} with the backup of "
                          f"{manifest['created']}?", abort=True)
        result = restore_site(site, Path(tmp))
    control = site.inventory.groups["control_plane"][0].name
    click.echo(f"restore: {archive} is back; "
               f"{result.hosts[control].facts['audit_verify'].strip().splitlines()[-1]}")


ALL = (init, secrets, render, check, deploy, status, rotate, agents, uninstall, demo,
       export_ansible, backup, restore)
