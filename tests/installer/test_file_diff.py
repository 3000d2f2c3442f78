"""`deploy --dry-run`'s file changes: filediff's probe runs in a real shell against real files
(here in a temporary folder instead of a host's /etc), and the deploy's lines show each
changed file with its unified diff, a secret file by name only. The whole, against a
deployed lab host, is tests/lab/test_dry_run_diff.py."""

import grp
import os
import pwd
import subprocess
from pathlib import Path

import pytest
from cmdop_install import filediff
from cmdop_install.filediff import FileChange
from cmdop_install.progress import QUIET, VERBOSE
from cmdop_install.render import RenderedFile
from cmdop_install.runner import HostResult, OpResult, RunResult

pytestmark = pytest.mark.unit

SENSITIVE = "s3cret-value-that-must-never-show"


def probe(files: list[RenderedFile]) -> str:
    proc = subprocess.run(["sh", "-c", filediff.probe_command(files)], capture_output=True,
                          text=True, check=True)
    assert proc.stderr == ""
    return proc.stdout.rstrip("\n")  # as pyinfra's Command fact hands it over


@pytest.fixture
def files(tmp_path: Path) -> list[RenderedFile]:
    """Rendered files against what a 'host' (tmp_path) has: one as rendered, one drifted,
    one missing, a secret drifted, one with another mode, a folder where a file belongs."""
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    (tmp_path / "same.conf").write_text("a\nb\n")
    (tmp_path / "drifted.conf").write_text("port 1\nbind lo\n# drifted\n")
    (tmp_path / "secret.env").write_text(f"PASSWORD={SENSITIVE}-old\n")
    (tmp_path / "mode.conf").write_text("m\n")
    (tmp_path / "a-folder").mkdir()
    for name in ("same.conf", "drifted.conf", "secret.env", "mode.conf"):
        (tmp_path / name).chmod(0o644)

    def rendered(name: str, content: str, mode: int = 0o644, secret: bool = False):
        return RenderedFile(str(tmp_path / name), content.encode(), mode, user, group, secret)

    return [rendered("same.conf", "a\nb\n"),
            rendered("drifted.conf", "port 1\nbind lo\n"),
            rendered("new.conf", "hello\n"),
            rendered("secret.env", f"PASSWORD={SENSITIVE}\n", 0o600, secret=True),
            rendered("mode.conf", "m\n", 0o600),
            rendered("a-folder", "x\n")]


def test_each_changed_file_is_named_with_how_it_changes(files, tmp_path) -> None:
    changes = filediff.changes("db1", files, probe(files))
    assert [(c.path.removeprefix(f"{tmp_path}/"), c.change, c.secret) for c in changes] == [
        ("drifted.conf", "content", False),
        ("new.conf", "new", False),
        ("secret.env", "content", True),
        ("mode.conf", f"owner/mode {files[4].owner}:{files[4].group} 644 -> "
                      f"{files[4].owner}:{files[4].group} 600", False),
        ("a-folder", "not a regular file", False),
    ]


def test_a_drifted_file_gets_a_unified_diff_from_the_host_to_the_rendered_one(files) -> None:
    drifted, new = filediff.changes("db1", files, probe(files))[:2]
    assert drifted.diff.splitlines() == [
        f"--- db1:{files[1].path}", f"+++ rendered {files[1].path}", "@@ -1,3 +1,2 @@",
        " port 1", " bind lo", "-# drifted"]
    assert new.diff.splitlines()[:2] == ["--- /dev/null", f"+++ rendered {files[2].path}"]
    assert new.diff.splitlines()[-1] == "+hello"


def test_a_secret_file_never_shows_its_content_not_even_from_the_host(files) -> None:
    output = probe(files)
    assert SENSITIVE not in output  # the host sends only its hash back
    secret = next(c for c in filediff.changes("db1", files, output) if c.secret)
    assert secret.diff == ""
    assert secret.lines("would change", with_diff=True) == [
        f"file {files[3].path}: would change (content; secret, content not shown)"]


def test_a_file_without_a_final_newline_says_so_in_its_diff(tmp_path) -> None:
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    (tmp_path / "f").write_text("one\n")
    (tmp_path / "f").chmod(0o644)
    files = [RenderedFile(str(tmp_path / "f"), b"one\ntwo", 0o644, user, group)]
    (change,) = filediff.changes("h", files, probe(files))
    assert change.diff.splitlines()[-2:] == ["+two", "\\ No newline at end of file"]


def dry_run_result() -> RunResult:
    files = [FileChange("/etc/cmdop/server.toml", "content", False,
                        "--- db1:/etc/cmdop/server.toml\n+++ rendered /etc/cmdop/server.toml\n"
                        "@@ -1 +1 @@\n-a = 1\n+a = 2\n"),
             FileChange("/etc/cmdop/secret.env", "content", True)]
    return RunResult({
        "db1": HostResult("db1", [OpResult("Control plane | Files in /etc/cmdop", True, True),
                                  OpResult("Control plane | Service", False, True)], files=files),
        "web1": HostResult("web1", [OpResult("Nginx | Files", False, True)]),
    }, dry_run=True)


def test_the_dry_run_lines_show_each_hosts_files_and_their_diffs() -> None:
    assert dry_run_result().host_lines("would change", diffs=True) == [
        "db1: 1 would change",
        "    Control plane | Files in /etc/cmdop",
        "    file /etc/cmdop/server.toml: would change (content)",
        "    --- db1:/etc/cmdop/server.toml",
        "    +++ rendered /etc/cmdop/server.toml",
        "    @@ -1 +1 @@",
        "    -a = 1",
        "    +a = 2",
        "    file /etc/cmdop/secret.env: would change (content; secret, content not shown)",
        "web1: 0 would change",
    ]


def test_verbose_lines_show_every_operation_and_quiet_only_failed_hosts() -> None:
    result = dry_run_result()
    assert result.host_lines("changed", VERBOSE)[:3] == [
        "db1: 1 changed",
        "    changed  Control plane | Files in /etc/cmdop",
        "    ok       Control plane | Service",
    ]
    assert result.host_lines("changed", QUIET) == []
    result.hosts["web1"].error = "failed at: Nginx | Files (its output is above)"
    assert result.host_lines("changed", QUIET) == [
        "web1: FAILED: failed at: Nginx | Files (its output is above)"]


def test_the_json_document_lists_the_files_without_a_secrets_content() -> None:
    hosts = dry_run_result().as_json()["hosts"]
    assert hosts[0]["files"][1] == {"path": "/etc/cmdop/secret.env", "change": "content",
                                    "secret": True, "diff": None}
    assert hosts[0]["files"][0]["diff"].endswith("+a = 2\n")
    assert hosts[1]["files"] == []
