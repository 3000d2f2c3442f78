"""`--json` on check, deploy, agents rollout, secrets list and uninstall: one JSON document on
stdout (the schemas in docs/cli.md), every human line on stderr, never a secret value. A real
site folder; the hosts are faked at the runner boundary (a deploy's converge, uninstall's run,
the rollout engine)."""

import json
from pathlib import Path

import pytest
from cmdop_install import deploy, rollout, uninstall
from cmdop_install.cli import main
from cmdop_install.rollout import HostOutcome, Outcome
from cmdop_install.runner import UNREACHABLE, HostResult, OpResult, RunResult
from cmdop_install.sitedir import SiteDir

from tests.support.sites import TEST_KEY, make_site, write_site

pytestmark = pytest.mark.unit


@pytest.fixture
def site_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    return make_site(tmp_path / "site", agents=True)


def _run(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def _no_secret_in(site_dir: Path, text: str) -> None:
    values = SiteDir.load(site_dir).store.values()
    assert values and not [n for n, v in values.items() if v and v in text]


RESULT = RunResult({"node1": HostResult("node1", [OpResult("Files in /etc/cmdop", True, True),
                                                  OpResult("Unchanged", False, True)],
                                        facts={"enrolled": "yes"}),
                    "agent1": HostResult("agent1", error=UNREACHABLE)}, dry_run=False)
HOSTS = [{"host": "node1", "changes": 1, "error": None,
          "operations": [{"name": "Files in /etc/cmdop", "changed": True, "success": True}],
          "files": []},
         {"host": "agent1", "changes": 0, "error": UNREACHABLE, "operations": [], "files": []}]


def test_check_json_lists_warnings_and_problems(site_dir, capsys, monkeypatch):
    write_site(site_dir, agents=True, address="10.9.8.7")  # certificates now name the old one
    code, doc, err = _run(capsys, "check", str(site_dir), "--json")
    assert code == 0 and err == ""
    assert doc["ok"] is True and doc["problems"] == []
    assert any(w.startswith("warning: pki/postgres-node1.crt: names node1") for w in
               doc["warnings"])

    from cmdop_install import check

    monkeypatch.setattr(check, "check_site", lambda site: ["site.toml: bad", "warning: w"])
    code, doc, err = _run(capsys, "check", str(site_dir), "--json")
    assert (code, doc) == (1, {"ok": False, "problems": ["site.toml: bad"],
                               "warnings": ["warning: w"]})
    assert err == "cmdop-install: error: check: 1 problem(s) found\n"


def test_secrets_list_json_has_names_and_ages_never_values(site_dir, capsys):
    code = main(["secrets", "list", str(site_dir), "--json"])
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert code == 0
    names = {s["name"] for s in doc["secrets"]}
    assert names == {r["name"] for r in SiteDir.load(site_dir).store.listing()}
    key = next(s for s in doc["secrets"] if s["name"] == "django_secret_key")
    assert key["rotatable"] is True and key["why_not"] is None and key["age"] == "0d"
    assert set(key) == {"name", "created", "age", "source", "rotatable", "why_not"}
    assert all(o["why_not"] for o in doc["other"])
    _no_secret_in(site_dir, out)


def test_deploy_json_is_the_document_and_the_lines_go_to_stderr(site_dir, capsys, monkeypatch):
    monkeypatch.setattr(deploy, "preflight", lambda inventory, limit: None)
    monkeypatch.setattr(deploy, "wheelhouse_facts", lambda package: {})
    monkeypatch.setattr(deploy, "_converge", lambda *args: RESULT)
    code = main(["deploy", str(site_dir), "--json"])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert code == 1  # agent1 failed: the document says so, then the one-line error
    assert doc == {"dry_run": False, "ok": False, "issued": [], "changes": 1,
                   "failed": ["agent1"], "hosts": HOSTS}
    assert "node1: 1 changed" in captured.err and "deploy failed on agent1" in captured.err
    _no_secret_in(site_dir, captured.out + captured.err)


def test_uninstall_json(site_dir, capsys, monkeypatch):
    monkeypatch.setattr(uninstall, "preflight", lambda inventory, limit: None)
    monkeypatch.setattr(uninstall, "run_deploy", lambda *args, **kwargs: RESULT)
    code = main(["uninstall", str(site_dir), "--keep-data", "--yes", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out) == {"keep_data": True, "ok": False, "changes": 1,
                                        "failed": ["agent1"], "hosts": HOSTS}
    assert "uninstall failed on agent1" in captured.err


def test_agents_rollout_json(site_dir, capsys, monkeypatch):
    class Engine:  # the rollout's batches are tested in test_rollout_plan and on the lab
        def __init__(self, site, echo, health_timeout, bundle_file) -> None:
            self.echo = echo

        def run(self, version, batch_size, canary, max_fail) -> Outcome:
            self.echo("canary: agent1 -> 0.2.0")
            return Outcome("0.2.0", {"agent1": HostOutcome("agent1", "0.1.0", "0.2.0", "upgraded",
                                                           "online")}, batches=[["agent1"]])

    monkeypatch.setattr(rollout, "Rollout", Engine)
    code, doc, err = _run(capsys, "agents", "rollout", str(site_dir), "--json")
    assert code == 0
    assert doc == {"version": "0.2.0", "ok": True, "stopped": None, "resumed": False,
                   "failed": [], "batches": [["agent1"]],
                   "hosts": [{"name": "agent1", "before": "0.1.0", "after": "0.2.0",
                              "result": "upgraded", "detail": "online"}]}
    assert err.splitlines()[0] == "canary: agent1 -> 0.2.0"
    assert "every agent runs it and is online" in err
