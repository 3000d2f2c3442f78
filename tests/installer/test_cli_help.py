"""The command line documents itself: every command's --help has an example, and the exit
codes in docs/cli.md and in `cmdop-install --help` are the ones the entry point returns."""

import re
from pathlib import Path

import click
import pytest
from cmdop_install import cli as cli_module
from cmdop_install.cli import cli, main

pytestmark = pytest.mark.unit

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _commands(group: click.Group = cli, path: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def _help(capsys, *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("path", [p for p, _ in _commands()], ids=" ".join)
def test_every_command_help_has_an_example_of_itself(path, capsys) -> None:
    text = _help(capsys, *path)
    assert "Example:" in text, f"cmdop-install {' '.join(path)} --help has no example"
    example = text.split("Example:", 1)[1].split("\n\n", 1)[0]
    assert f"cmdop-install {' '.join(path)}" in example


@pytest.mark.parametrize("path", [p for p, c in _commands() if not isinstance(c, click.Group)],
                         ids=" ".join)
def test_every_command_is_in_docs_cli(path) -> None:
    assert f"`{' '.join(path)}" in CLI_DOC.read_text(), f"docs/cli.md lacks {' '.join(path)}"


def _doc_codes() -> set[int]:
    section = CLI_DOC.read_text().split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(c) for c in re.findall(r"(?m)^\| (\d+) \|", section)}


def _help_codes(capsys) -> set[int]:
    section = _help(capsys).split("Exit codes:", 1)[1].split("\n\n", 1)[0]
    return {int(c) for c in re.findall(r"(?m)^\s+(\d+)\s", section)}


def test_exit_codes_are_documented_once_and_alike(capsys) -> None:
    assert _doc_codes() == _help_codes(capsys) == {0, 1, 2, 70, 130}


def test_each_documented_exit_code_is_what_main_returns(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CMDOP_LAB_HOME", str(tmp_path / "labs"))
    monkeypatch.delenv("CMDOP_INSTALL_DEBUG", raising=False)
    seen = {main(["--version"]): "success"}
    seen[main(["lab", "status"])] = "a problem to fix (there is no lab)"
    seen[main(["check", "--no-such-option"])] = "a wrong command line"

    def fail(exc: BaseException):
        def raising(*args, **kwargs):
            raise exc
        return raising

    monkeypatch.setattr(cli_module.cli, "main", fail(RuntimeError("a bug")))
    seen[main(["check", "x"])] = "internal error"
    monkeypatch.setattr(cli_module.cli, "main", fail(KeyboardInterrupt()))
    seen[main(["check", "x"])] = "interrupted"
    capsys.readouterr()
    assert set(seen) == _doc_codes()


def test_internal_error_prints_the_type_only(monkeypatch, capsys) -> None:
    monkeypatch.delenv("CMDOP_INSTALL_DEBUG", raising=False)

    def bug(*args, **kwargs):
        raise ValueError("password=hunter2hunter2")

    monkeypatch.setattr(cli_module.cli, "main", bug)
    assert main(["check", "x"]) == 70
    err = capsys.readouterr().err
    assert err == ("cmdop-install: internal error (ValueError); rerun with "
                   "CMDOP_INSTALL_DEBUG=1 for details\n")


def test_shell_completion_is_the_documented_variable(monkeypatch, capsys) -> None:
    monkeypatch.setenv("_CMDOP_INSTALL_COMPLETE", "bash_source")
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 0
    assert "_CMDOP_INSTALL_COMPLETE=bash_complete" in capsys.readouterr().out
    assert "_CMDOP_INSTALL_COMPLETE=bash_source cmdop-install" in CLI_DOC.read_text()
