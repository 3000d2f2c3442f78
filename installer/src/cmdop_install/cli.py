"""cmdop-install: the command line. Thin by design: each command hands off to a module.

Sub-command groups live next to the code they drive and are registered here.
"""

import sys

import click

from cmdop_install import __version__
from cmdop_install.bundle_cli import bundle_group
from cmdop_install.commands import ALL as SITE_COMMANDS
from cmdop_install.errors import UserError
from cmdop_install.lab.cli import lab


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cmdop-install")
def cli() -> None:
    """Install and operate CMDOP self-hosted on your own machines.

    Every command has --help with an example. More: docs/cli.md.

    \b
    Example:
      cmdop-install init mysite && cmdop-install check mysite

    \b
    Exit codes:
      0    success
      1    a problem to fix: the message names the file, key or host
      2    a wrong command line, or a malformed site.toml
      70   an internal error (a bug): rerun with CMDOP_INSTALL_DEBUG=1
      130  interrupted

    \b
    Shell completion (bash; zsh_source and fish_source likewise):
      eval "$(_CMDOP_INSTALL_COMPLETE=bash_source cmdop-install)"
    """


cli.add_command(lab)
cli.add_command(bundle_group)
for _command in SITE_COMMANDS:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear line per error, never a traceback (tracebacks can carry secrets)."""
    try:
        cli.main(args=argv, prog_name="cmdop-install", standalone_mode=False)
    except UserError as exc:
        click.echo(f"cmdop-install: error: {exc.message}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("cmdop-install: aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("cmdop-install: interrupted", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: type only, no locals, no message
        click.echo(
            f"cmdop-install: internal error ({type(exc).__name__}); rerun with "
            "CMDOP_INSTALL_DEBUG=1 for details",
            err=True,
        )
        if _debug():
            raise
        return 70
    return 0


def _debug() -> bool:
    import os

    return os.environ.get("CMDOP_INSTALL_DEBUG") == "1"


if __name__ == "__main__":
    sys.exit(main())
