"""docs/alerts.yml (issue 19 item 4): Prometheus accepts it (``promtool check rules``), its
alerts fire and stay quiet on made-up series as intended (``promtool test rules`` with
alerts_test.yml next to this file), and every metric it reads is one /metrics serves.

promtool comes with Debian's prometheus package, which scripts/bootstrap.sh installs
(without starting or enabling its daemon).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cmdop_server import metrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "alerts.yml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
# Prometheus' own scrape health and the blackbox exporter's certificate probe
NOT_OURS = {"up", "probe_ssl_earliest_cert_expiry"}


def promtool() -> str:
    found = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(found).exists():  # as the nginx tests do on a machine not yet bootstrapped
        pytest.skip("promtool is not installed (scripts/bootstrap.sh installs prometheus)")
    return found


def test_promtool_accepts_the_rules():
    run = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_alerts_fire_and_stay_quiet_as_intended():
    run = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True,
                         text=True, timeout=120, check=False, cwd=RULE_TESTS.parent)
    assert run.returncode == 0, run.stdout + run.stderr


def _exported() -> set[str]:
    names = set()
    for name, (kind, _) in metrics.HELP.items():
        names |= {name} | ({f"{name}_{s}" for s in ("bucket", "sum", "count")}
                           if kind == "histogram" else set())
    return names


def test_every_alert_reads_metrics_the_control_plane_serves():
    rules = [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]
    exported = _exported()
    assert {r["alert"] for r in rules} >= {
        "CmdopAgentsOfflineInBulk", "CmdopHigh5xxRatio", "CmdopAuditWriteFailures",
        "CmdopRedisErrors", "CmdopDatabaseErrors", "CmdopAuthFailureSpike",
        "CmdopCertificateExpiresSoon"}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        expr = rule["expr"]
        ours = set(re.findall(r"\b(cmdop_[a-z_]+)", expr))
        selected = set(re.findall(r"\b([a-z_:]+)\s*[{\[]", expr)) - ours
        assert ours or selected, f"{rule['alert']} reads no series"
        assert ours <= exported, f"{rule['alert']}: not served: {ours - exported}"
        assert selected <= NOT_OURS, f"{rule['alert']}: unknown series {selected - NOT_OURS}"
