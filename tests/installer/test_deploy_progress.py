"""Live per-host progress of a deploy or rollout, and --verbose/--quiet.

The renderers get scripted events and a fake clock; the live one writes into a small
terminal emulator that applies its control sequences, so the test reads the screen the
operator would see. The events themselves come from the real runner child on pyinfra's
``@fake`` hosts."""

import io
import re
from pathlib import Path

import pytest
from cmdop_install import runner
from cmdop_install.cli import main
from cmdop_install.progress import NORMAL, QUIET, VERBOSE, Live, Plain, for_output
from cmdop_install.status import problem_lines

from tests.installer.test_pyinfra_internals import FAKE
from tests.installer.test_status_output import Hosts
from tests.support.sites import TEST_KEY, make_site

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_events(sink, clock: Clock) -> None:
    """db1: 3 operations (the 2nd changes, at 0:05); web1: 2 operations, the 2nd fails;
    cache1 is unreachable."""
    sink.begin(["cache1", "db1", "web1"], False)
    sink.event({"event": "phase", "phase": "connect"})
    sink.event({"host": "db1", "event": "connected"})
    sink.event({"host": "web1", "event": "connected"})
    sink.event({"host": "cache1", "event": "unreachable"})
    sink.event({"event": "phase", "phase": "plan"})
    sink.event({"host": "db1", "event": "planned", "total": 3})
    sink.event({"host": "web1", "event": "planned", "total": 2})
    sink.event({"event": "phase", "phase": "run"})
    for host, op, changed, success, at in [
        ("db1", "Packages", False, True, 101.0),
        ("web1", "Packages", False, True, 101.0),
        ("db1", "Postgres | Files in /etc/postgresql", True, True, 105.0),
        ("web1", "Nginx | Files", False, False, 106.0),
        ("db1", "Postgres | Service", False, True, 107.0),
    ]:
        sink.event({"host": host, "event": "start", "op": op})
        clock.now = at
        sink.event({"host": host, "event": "done", "op": op, "changed": changed,
                    "success": success})
    sink.end()


def plain_lines(verbosity: int) -> list[str]:
    clock, out = Clock(), io.StringIO()
    run_events(Plain(out, verbosity, clock), clock)
    assert "\x1b" not in out.getvalue()
    return out.getvalue().splitlines()


def test_plain_output_is_one_line_per_event_worth_one() -> None:
    assert plain_lines(NORMAL) == [
        "db1: connected",
        "web1: connected",
        "cache1: unreachable over ssh",
        "db1: 3 operations planned",
        "web1: 2 operations planned",
        "db1: [2/3] changed Postgres | Files in /etc/postgresql (0:05)",
        "web1: [2/2] FAILED Nginx | Files (0:06)",
        "db1: done, 1 changed, 3 operations in 0:07",
    ]


def test_verbose_shows_every_operation_with_its_result_and_quiet_only_failures() -> None:
    verbose = plain_lines(VERBOSE)
    assert "db1: [1/3] ok Packages (0:01)" in verbose
    assert verbose[-2:] == ["db1: [3/3] ok Postgres | Service (0:07)",
                            "db1: done, 1 changed, 3 operations in 0:07"]
    assert len([line for line in verbose if "] " in line]) == 5
    assert plain_lines(QUIET) == ["cache1: unreachable over ssh",
                                  "web1: [2/2] FAILED Nginx | Files (0:06)"]


class Terminal:
    """Enough of a terminal for Live: text, newline, ESC[nF (up n lines, to column 0),
    ESC[J (clear to the end of the screen), ESC[2K (clear the line)."""

    def __init__(self) -> None:
        self.rows: list[str] = [""]
        self.row = 0
        self.writes = 0

    def write(self, text: str) -> None:
        self.writes += 1
        for piece in re.split(r"(\x1b\[\d*[A-Za-z]|\n)", text):
            if piece == "\n":
                self.row += 1
                if self.row == len(self.rows):
                    self.rows.append("")
            elif piece.startswith("\x1b["):
                code, arg = piece[-1], piece[2:-1]
                if code == "F":
                    self.row -= int(arg)
                    assert self.row >= 0, "moved above the first line"
                elif code == "J":
                    self.rows = self.rows[:self.row] + [""]
                elif code == "K":
                    self.rows[self.row] = ""
                else:
                    raise AssertionError(f"unexpected control sequence {piece!r}")
            else:
                self.rows[self.row] += piece

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        return [row for row in self.rows if row]


def live_screen(verbosity: int, columns: int = 120) -> list[str]:
    clock, terminal = Clock(), Terminal()
    run_events(Live(terminal, verbosity, clock, lambda: columns), clock)
    return terminal.screen()


def test_a_terminal_shows_one_line_per_host_with_its_final_state() -> None:
    assert live_screen(NORMAL) == [
        "cache1  unreachable       -    0 changed   0:00",
        "db1     done            3/3    1 changed   0:07",
        "web1    FAILED          2/2    0 changed   0:06  Nginx | Files",
    ]


def test_each_line_is_redrawn_in_place_as_the_host_goes() -> None:
    clock, terminal = Clock(), Terminal()
    live = Live(terminal, NORMAL, clock, lambda: 120)
    live.begin(["db1", "web1"], False)
    live.event({"host": "db1", "event": "connected"})
    live.event({"event": "phase", "phase": "plan"})
    live.event({"host": "db1", "event": "planned", "total": 4})
    live.event({"host": "db1", "event": "start", "op": "Postgres | Files"})
    clock.now = 112.0
    live.tick()  # no event for a while: the elapsed time still moves
    assert terminal.screen() == [
        "db1   running         0/4    0 changed   0:12  Postgres | Files",
        "web1  planning          -    0 changed   0:12",
    ]


def test_verbose_lines_scroll_above_the_host_lines_and_logs_too() -> None:
    screen = live_screen(VERBOSE)
    assert screen[:-3] == plain_lines(VERBOSE)  # every event's line, above
    assert [row.split()[:2] for row in screen[-3:]] == [
        ["cache1", "unreachable"], ["db1", "done"], ["web1", "FAILED"]]
    clock, terminal = Clock(), Terminal()
    live = Live(terminal, NORMAL, clock, lambda: 120)
    live.begin(["db1"], False)
    live.message("E: Unable to locate package postgresql-99")
    assert terminal.screen() == ["E: Unable to locate package postgresql-99",
                                 "db1  connecting        -    0 changed   0:00"]


def test_each_run_of_a_rollout_keeps_its_lines_and_the_next_starts_below() -> None:
    clock, terminal = Clock(), Terminal()
    live = Live(terminal, NORMAL, clock, lambda: 120)
    for batch in (["agent1"], ["agent2", "agent3"]):
        live.begin(batch, False)
        for host in batch:
            live.event({"host": host, "event": "unreachable"})
        live.end()
    assert [row.split()[:2] for row in terminal.screen()] == [
        ["agent1", "unreachable"], ["agent2", "unreachable"], ["agent3", "unreachable"]]


def test_a_host_with_no_operation_to_run_is_done_when_the_run_ends() -> None:
    clock, terminal = Clock(), Terminal()
    live = Live(terminal, NORMAL, clock, lambda: 120)
    live.begin(["db1"], False)
    live.event({"host": "db1", "event": "planned", "total": 0})
    clock.now = 103.0
    live.end()
    assert terminal.screen() == ["db1  done            0/0    0 changed   0:03"]


def test_a_host_line_never_wraps_on_a_narrow_terminal() -> None:
    screen = live_screen(NORMAL, columns=30)
    assert screen and all(len(row) <= 29 for row in screen)


def test_the_sink_fits_the_output() -> None:
    assert for_output(Terminal(), NORMAL, as_json=True) is None
    assert isinstance(for_output(Terminal(), NORMAL, False), Live)
    assert isinstance(for_output(Terminal(), QUIET, False), Plain)
    assert isinstance(for_output(io.StringIO(), VERBOSE, False), Plain)


class Recorder:
    verbosity = NORMAL

    def __init__(self) -> None:
        self.calls: list = []

    def begin(self, hosts, dry_run) -> None:
        self.calls.append(("begin", hosts, dry_run))

    def event(self, event) -> None:
        self.calls.append(event)

    def message(self, line) -> None:
        self.calls.append(("message", line))

    def tick(self) -> None:
        pass

    def end(self) -> None:
        self.calls.append("end")


def test_the_runner_child_reports_each_hosts_progress_as_it_goes(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the deploys, for the child
    groups = {"postgres": [("@fake/db", FAKE)],
              "web": [("@fake/web", {**FAKE, "fake_responses": {"cat /etc/x": "before"}})]}
    deploy = "test_pyinfra_internals:deploy_by_role"
    sink = Recorder()
    with runner.reporting(sink):
        result = runner.run_deploy(groups, deploy, facts_before={"@fake/web": {"x": "cat /etc/x"}})
    assert result.hosts["@fake/web"].facts == {"x": "before"}
    assert sink.calls[0] == ("begin", ["@fake/db", "@fake/web"], False)
    assert sink.calls[-1] == "end"
    web = [c for c in sink.calls if isinstance(c, dict) and c.get("host") == "@fake/web"]
    assert web == [
        {"host": "@fake/web", "event": "connected"},
        {"host": "@fake/web", "event": "planned", "total": 1},
        {"host": "@fake/web", "event": "start", "op": "Web"},
        {"host": "@fake/web", "event": "done", "op": "Web", "changed": True, "success": True},
    ]
    db_ops = [c["op"] for c in sink.calls if isinstance(c, dict) and c.get("host") == "@fake/db"
              and c["event"] == "done"]
    assert db_ops == ["Database", "Database backup"]
    phases = [c["phase"] for c in sink.calls if isinstance(c, dict) and c["event"] == "phase"]
    assert phases == ["connect", "plan", "run"]
    # the same run without a sink: the same result, no events
    assert runner.run_deploy(groups, deploy).host_lines() == result.host_lines()
    with runner.reporting(sink):
        runner.read_facts(groups, {"x": "cat /etc/x"})
    assert sink.calls[-1] == "end" and len([c for c in sink.calls if c == "end"]) == 1


@pytest.fixture
def site_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    return make_site(tmp_path / "site", agents=True)


def test_verbose_and_quiet_together_are_refused(site_dir, capsys) -> None:
    for command in (["deploy"], ["check"], ["status"], ["agents", "rollout"]):
        assert main([*command, str(site_dir), "--verbose", "--quiet"]) == 2
        assert "--verbose and --quiet: give one of them" in capsys.readouterr().err


def test_check_quiet_hides_warnings_and_verbose_lists_the_linted_files(site_dir, capsys):
    from tests.support.sites import write_site

    write_site(site_dir, agents=True, address="10.9.8.7")  # a warning: renamed certificates
    assert main(["check", str(site_dir), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [out[-1]] and out[-1].startswith("check: ok (")
    assert main(["check", str(site_dir)]) == 0
    normal = capsys.readouterr().out.splitlines()
    assert any(line.startswith("warning: ") for line in normal)
    assert main(["check", str(site_dir), "--verbose"]) == 0
    verbose = capsys.readouterr().out.splitlines()
    hosts = [line.split(":")[0] for line in verbose if line.endswith("rendered and linted")]
    assert hosts == ["node1", "agent1"]
    assert "    0640 redis:redis /etc/redis/redis.conf" in verbose
    assert "    0600 redis:redis /etc/redis/users.acl (secret)" in verbose
    assert set(normal) < set(verbose)


def test_status_quiet_shows_only_what_needs_the_operator(site_dir, monkeypatch, capsys):
    from cmdop_install import status

    monkeypatch.setattr(status, "read_facts", Hosts().read_facts)
    assert main(["status", str(site_dir), "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("agent1 (127.0.0.2)  unreachable: ")
    assert out[-1].startswith("status: 2 host(s), ") and out[-1].endswith(" problem(s)")
    assert not any(line.startswith("node1") for line in out)  # every component active


def test_status_problem_lines_name_each_component_not_running() -> None:
    info = {"hosts": [{"host": "db1", "address": "10.0.0.1", "components": [
        {"component": "postgres", "state": "failed", "version": "15"},
        {"component": "control_plane", "state": "active", "version": "1",
         "restart_pending": True},
        {"component": "agents", "state": "active", "version": "0.1", "online": False,
         "last_seen": None}]}], "warnings": ["warning: pki/x.crt expires in 3 days"]}
    assert problem_lines(info) == [
        "db1: postgres failed",
        "db1: control_plane a release other than current is serving (a deploy stopped "
        "before its switch, or old workers are still finishing)",
        "db1: agent OFFLINE (last seen never)",
        "warning: pki/x.crt expires in 3 days",
    ]
