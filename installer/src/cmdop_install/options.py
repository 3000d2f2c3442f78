"""Options shared by the site commands, defined once (pip-tools' ``scripts/options.py``)."""

from __future__ import annotations

import functools
from pathlib import Path

import click

site_dir_arg = click.argument(
    "site_dir", type=click.Path(file_okay=False, path_type=Path), metavar="SITE_DIR"
)
limit = click.option(
    "--limit",
    "limit",
    multiple=True,
    metavar="GROUP|HOST",
    help="Only these groups or hosts (repeatable).",
)
dry_run = click.option("--dry-run", is_flag=True, help="Show what would change; touch nothing.")
yes = click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
as_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
bundle = click.option(
    "--bundle",
    "bundle_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Install only from this signed offline bundle (default: site.toml [bundle] file); "
    "it is verified against [bundle] pubkey before any host is touched.",
)


def verbosity(verbose_help: str):
    """``--verbose`` / ``--quiet``, handed to the command as one ``verbosity``
    (``progress.QUIET``, ``NORMAL`` or ``VERBOSE``); ``verbose_help`` says what --verbose adds."""
    from cmdop_install.progress import NORMAL, QUIET, VERBOSE

    def decorate(command):
        @functools.wraps(command)
        def with_verbosity(*args, verbose: bool, quiet: bool, **kwargs):
            if verbose and quiet:
                raise click.UsageError("--verbose and --quiet: give one of them")
            level = VERBOSE if verbose else QUIET if quiet else NORMAL
            return command(*args, verbosity=level, **kwargs)

        quiet = click.option("-q", "--quiet", is_flag=True,
                             help="Only errors and the final summary.")
        verbose = click.option("-v", "--verbose", is_flag=True, help=verbose_help)
        return verbose(quiet(with_verbosity))

    return decorate
