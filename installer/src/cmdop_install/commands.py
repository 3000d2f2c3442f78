"""The site commands: init, secrets, render, check. Thin: each calls one module."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cmdop_install.errors import UserError

site_dir_arg = click.argument(
    "site_dir", type=click.Path(file_okay=False, path_type=Path), metavar="SITE_DIR")


@click.command()
@site_dir_arg
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to keep the secrets key (default: ~/.config/cmdop-install/keys/; "
                   "never inside SITE_DIR).")
def init(site_dir: Path, key_file: Path | None) -> None:
    """Create SITE_DIR (site.toml, inventory.py, secrets.enc, pki/) or complete it.

    Running it again changes nothing that exists: no secret is regenerated and only
    missing, expiring or renamed certificates are issued.
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
    """List, show or pin the site's secrets (values only on `show NAME`)."""


def _store(site_dir: Path):
    from cmdop_install.secrets import SecretStore
    from cmdop_install.site import load_site

    site = load_site(site_dir)
    return SecretStore.open(site_dir, site["site"]["key_file"])


@secrets.command("list")
@site_dir_arg
def secrets_list(site_dir: Path) -> None:
    """Names, creation time, age and source of every secret — never values."""
    rows = _store(site_dir).listing()
    width = max(len(r["name"]) for r in rows)
    click.echo(f"{'NAME':<{width}}  {'CREATED':<20}  {'AGE':>7}  SOURCE")
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['created']:<20}  {r['age']:>7}  {r['source']}")


@secrets.command("show")
@site_dir_arg
@click.argument("name")
def secrets_show(site_dir: Path, name: str) -> None:
    """Print the value of secret NAME (and nothing else)."""
    click.echo(_store(site_dir).get(name))


@secrets.command("set")
@site_dir_arg
@click.argument("name")
def secrets_set(site_dir: Path, name: str) -> None:
    """Pin secret NAME to a value read from stdin (never from argv); it wins from now on.

    Weak values are refused and nothing is changed.
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
              help="Output folder: OUT/<host>/<path> plus OUT/manifest.json.")
def render(site_dir: Path, host: str | None, out: Path) -> None:
    """Write exactly the files each host would receive, and a manifest of modes/owners."""
    from cmdop_install.render import render_site

    manifest = render_site(site_dir, out, host)
    for name, files in manifest["hosts"].items():
        click.echo(f"{name}: {len(files)} files")
    click.echo(f"manifest: {out / 'manifest.json'}")


@click.command()
@site_dir_arg
def check(site_dir: Path) -> None:
    """Validate site.toml and inventory.py and lint the rendered files; exit 1 on findings."""
    from cmdop_install.check import check_site

    findings = check_site(site_dir)
    for finding in findings:
        click.echo(finding)
    if any(not f.startswith("warning:") for f in findings):
        raise UserError(f"check: {sum(not f.startswith('warning:') for f in findings)} "
                        "problem(s) found", 1)
    click.echo("check: ok" + (f" ({len(findings)} warning(s))" if findings else ""))


ALL = (init, secrets, render, check)
