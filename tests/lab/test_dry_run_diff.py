"""`deploy --dry-run` against the deployed lab site: each file that drifted is named, a
non-secret one with a unified diff from the host's copy, a secret one by name only; the dry
run leaves every file as it was, and the deploy that follows reports, and changes, exactly
the same files, its progress shown host by host as plain lines (issue 21 Output)."""

import re

import pytest
from cmdop_install.sitedir import SiteDir

from tests.lab.conftest import NORMAL_HOSTS
from tests.lab.helpers import cli, lab_ssh

pytestmark = pytest.mark.lab

AGENT_TOML = "/etc/cmdop-agent/agent.toml"  # not secret: gets a diff
PGPASS = "/etc/cmdop-backup/pgpass"  # secret: name only
BACKUP_SCRIPT = "/etc/cmdop-backup/cmdop-backup"  # not secret, 0600: its mode drifts
DRIFT_MARK = "# drifted before the dry run"
JUNK_IN_PGPASS = "appended-to-a-secret-file"
FILE_LINE = re.compile(r"^    file (\S+): (would change|changed) \((.*)\)$")


def file_states(lab, host: str, paths: list[str]) -> dict[str, str]:
    """path -> its sha256, mode and owner on ``host`` (missing paths are absent)."""
    command = "; ".join(f"sudo sh -c 'test -f {p} && echo {p} $(sha256sum < {p} | cut -c1-64) "
                        f"$(stat -c %a:%U:%G {p})'" for p in paths)
    out = lab_ssh(lab, host, command + "; true").stdout
    return {path: rest for path, rest in (line.split(" ", 1) for line in out.splitlines())}


def reported_files(stdout: str) -> dict[str, dict[str, str]]:
    """host -> {path: how} from the deploy's per-host lines."""
    found: dict[str, dict[str, str]] = {}
    host = None
    for line in stdout.splitlines():
        header = re.match(r"^(\S+): \d+ (would change|changed)$", line)
        if header:
            host = header.group(1)
            found[host] = {}
        elif (match := FILE_LINE.match(line)) and host is not None:
            found[host][match.group(1)] = match.group(3)
    return found


def test_a_dry_run_shows_the_drifted_files_changes_nothing_and_the_deploy_agrees(lab, site):
    cli("deploy", str(site.dir))  # whatever an earlier test left, the drift below is all
    site_dir = SiteDir.load(site.dir)
    paths = {h: [f.path for f in site_dir.files(h)] for h in ("host1", "host3")}
    drift = {
        "host3": f"echo '{DRIFT_MARK}' | sudo tee -a {AGENT_TOML} >/dev/null",
        "host1": (f"echo {JUNK_IN_PGPASS} | sudo tee -a {PGPASS} >/dev/null && "
                  f"sudo chmod 640 {BACKUP_SCRIPT}"),
    }
    for host, command in drift.items():
        assert lab_ssh(lab, host, command).returncode == 0
    before = {h: file_states(lab, h, p) for h, p in paths.items()}

    dry = cli("deploy", str(site.dir), "--dry-run")
    would = reported_files(dry.stdout)
    assert set(would) == set(NORMAL_HOSTS), dry.stdout
    assert would["host3"] == {AGENT_TOML: "content"}, dry.stdout
    assert would["host1"] == {
        PGPASS: "content; secret, content not shown",
        BACKUP_SCRIPT: "owner/mode root:root 640 -> root:root 600",
    }, dry.stdout
    assert all(not files for h, files in would.items() if h not in ("host1", "host3"))
    diff = dry.stdout.split(f"    file {AGENT_TOML}: would change (content)\n")[1].splitlines()
    assert diff[:2] == [f"    --- host3:{AGENT_TOML}", f"    +++ rendered {AGENT_TOML}"]
    assert f"    -{DRIFT_MARK}" in diff[2:12], dry.stdout
    output = dry.stdout + dry.stderr
    assert JUNK_IN_PGPASS not in output
    assert not [name for name, value in site.secrets.items() if value and value in output]
    assert {h: file_states(lab, h, p) for h, p in paths.items()} == before, \
        "the dry run changed a file"

    real = cli("deploy", str(site.dir))
    # not a terminal: progress as plain lines on stderr, each host's as it goes
    progress = real.stderr.splitlines()
    assert "\x1b" not in real.stderr
    for host in NORMAL_HOSTS:
        assert f"{host}: connected" in progress, real.stderr
        assert any(re.fullmatch(rf"{host}: \d+ operations planned", line) for line in progress)
    assert any(re.match(r"host3: \[\d+/\d+\] changed ", line) for line in progress), real.stderr
    changed = reported_files(real.stdout)
    assert {h: set(files) for h, files in changed.items()} == \
        {h: set(files) for h, files in would.items()}, real.stdout
    after = {h: file_states(lab, h, p) for h, p in paths.items()}
    for host in paths:
        moved = {p for p in paths[host] if before[host].get(p) != after[host].get(p)}
        assert moved == set(would[host]), f"{host}: the deploy changed {moved}"
    assert after["host1"][BACKUP_SCRIPT].endswith(" 600:root:root")
    again = cli("deploy", str(site.dir), "--dry-run")
    assert again.stdout.strip().endswith(f"dry run: 0 change(s) on {len(NORMAL_HOSTS)} host(s)")
    assert not any(reported_files(again.stdout).values()), again.stdout
