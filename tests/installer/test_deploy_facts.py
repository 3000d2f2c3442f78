"""Our typed facts' commands, run by a real shell on scratch files, read back by their own
``process`` as pyinfra does (output lines when the command succeeds, else the default)."""

import grp
import os
import pwd
import subprocess

import pytest
from cmdop_install.deploys.facts import (
    ExistingPaths,
    InstallerState,
    IsExecutable,
    IsNonEmptyFile,
    LinkTarget,
    PathState,
    PathStates,
    PostgresValue,
    WheelhouseKey,
)

pytestmark = pytest.mark.unit

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def read(cls, *args):
    proc = subprocess.run(["sh", "-c", cls().command(*args)], capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    return cls().process(lines) if proc.returncode == 0 and lines else cls.default()


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "conf dir").mkdir()
    (tmp_path / "conf dir").chmod(0o750)  # whatever the umask
    (tmp_path / "conf dir" / "empty").touch()
    (tmp_path / "conf dir" / "empty").chmod(0o640)
    (tmp_path / "link").symlink_to(tmp_path / "conf dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return tmp_path


def test_path_states_name_kind_content_mode_and_owner(tree) -> None:
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    paths = [str(tree / p) for p in ("conf dir", "conf dir/empty", "link", "missing")]
    assert read(PathStates, paths) == {
        str(tree / "conf dir"): PathState("dir", "-", "750", user, group),
        str(tree / "conf dir/empty"): PathState("file", EMPTY_SHA256, "640", user, group),
        str(tree / "link"): PathState("other", "-", "-", "-", "-"),
    }
    assert read(PathStates, [str(tree / "missing")]) == {}


def test_existing_paths_count_a_dangling_link(tree) -> None:
    paths = [str(tree / p) for p in ("conf dir", "dangling", "missing")]
    assert read(ExistingPaths, paths) == paths[:2]
    assert read(ExistingPaths, [str(tree / "missing")]) == []


def test_link_target_is_empty_for_anything_but_a_link(tree) -> None:
    assert read(LinkTarget, str(tree / "link")) == str(tree / "conf dir")
    assert read(LinkTarget, str(tree / "conf dir")) == ""
    assert read(LinkTarget, str(tree / "missing")) == ""


def test_wheelhouse_key_is_the_marker_or_empty(tree) -> None:
    (tree / "venv").mkdir()
    assert read(WheelhouseKey, str(tree / "venv")) == ""
    (tree / "venv" / ".cmdop-wheelhouse").write_text("k2\n")
    assert read(WheelhouseKey, str(tree / "venv")) == "k2"


def test_executable_and_non_empty_file(tree) -> None:
    script = tree / "conf dir" / "run"
    script.write_text("#!/bin/sh\n")
    assert read(IsExecutable, str(script)) is False
    script.chmod(0o755)
    assert read(IsExecutable, str(script)) is True
    assert read(IsNonEmptyFile, str(script)) is True
    assert read(IsNonEmptyFile, str(tree / "conf dir" / "empty")) is False
    assert read(IsNonEmptyFile, str(tree / "missing")) is False


def test_installer_state_takes_the_key_value_words_and_fails_to_empty() -> None:
    noisy = "printf 'migrations ok\\ndefault=current audit=pending owner=present\\n'"
    assert read(InstallerState, noisy) == {
        "default": "current",
        "audit": "pending",
        "owner": "present",
    }
    assert read(InstallerState, "/nonexistent/cmdop-server installer_state") == {}


def test_postgres_value_quotes_the_query_and_reads_one_value() -> None:
    command = PostgresValue().command("SELECT rolname FROM pg_roles WHERE rolname = 'x'")
    assert command == (
        "runuser -u postgres -- psql -X -tA -c "
        "'SELECT rolname FROM pg_roles WHERE rolname = '\"'\"'x'\"'\"'' 2>/dev/null || true"
    )
    assert PostgresValue().process(["t", ""]) == "t"
    assert PostgresValue.default() == ""
