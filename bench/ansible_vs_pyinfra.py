"""The same site deployed by `cmdop-install deploy` (pyinfra) and by `ansible-playbook
site.yml` (roles/), on the same lab hosts: first deploy, no-op rerun, agent upgrade.

A lab of 1 control-plane host (Postgres, Redis, nginx, the control plane) + N agent hosts
(default 10). pyinfra first, as an operator runs it: `cmdop-install deploy`, `deploy` again
(zero changes required), then `cmdop-install agents rollout --version 0.1.1 --canary 0
--batch-size 100%` (every agent in one batch, gated on each reporting the new version to
the control plane). Then the lab goes down and up again (fresh hosts, same names and
addresses) and the same site goes through Ansible from the repository root (its
ansible.cfg: pipelining, ControlPersist, a fork per host): `export-ansible`, site.yml,
site.yml again (changed=0 on every host required), then site.yml `--limit agents` with the
new release and `cmdop_agent_switch` (no health gate: Ansible's figure is the lighter job).
Prints seconds side by side and the ratio Ansible / pyinfra.

Run as root, under the lab lock:
`flock /tmp/cmdop-lab-run.lock .venv/bin/python bench/ansible_vs_pyinfra.py [N]`.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support

from cmdop_install import agent_releases  # noqa: E402
from cmdop_install.lab import core  # noqa: E402
from cmdop_install.sitedir import SiteDir  # noqa: E402
from cmdop_install.siteinit import init_site  # noqa: E402

from tests.support.agent_release import build_agent_wheel  # noqa: E402

LAB = "mol"
NEW_AGENT = "0.1.1"
VENV_BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def lab_site(agents: int, tmp: Path) -> Path:
    """The lab's hosts up (fresh ones after a `down`) and the site over them, made once."""
    state = core.up(LAB, agents + 1, ())
    site_dir = tmp / "site"
    if not site_dir.exists():
        site_dir.mkdir(mode=0o700)
        names = [f"host{i}" for i in range(2, agents + 2)]
        (site_dir / "inventory.py").write_text(core.site_inventory_text(state, "host1", names))
        init_site(site_dir, key_file=tmp / "site.key")
        releases = site_dir / agent_releases.RELEASES_DIR
        releases.mkdir()
        shutil.copy(build_agent_wheel(NEW_AGENT, tmp), releases)
    site = SiteDir.load(site_dir)
    core.map_site_domain(site.inventory.pyinfra_groups(), site.config["site"]["domain"],
                         state.host("host1").ip)
    return site_dir


def timed(argv: list[str]) -> tuple[float, str]:
    """Seconds for one command as an operator runs it, and its stdout; stops on failure."""
    started = time.monotonic()
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False,
                         env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
    seconds = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{run.stdout[-3000:]}\n"
                         f"{run.stderr[-3000:]}")
    return seconds, run.stdout


def cli(*args: str) -> tuple[float, dict]:
    seconds, out = timed([str(VENV_BIN / "cmdop-install"), *args, "--json"])
    return seconds, json.loads(out)


def pyinfra_run(site_dir: Path) -> dict[str, float]:
    first_s, first = cli("deploy", str(site_dir))
    noop_s, again = cli("deploy", str(site_dir))
    assert again["changes"] == 0, [h for h in again["hosts"] if h["changes"]]
    upgrade_s, rollout = cli("agents", "rollout", str(site_dir), "--version", NEW_AGENT,
                             "--canary", "0", "--batch-size", "100%")
    assert rollout["ok"], rollout
    print(f"pyinfra: first {first['changes']} changes, no-op 0, rollout {rollout['batches']}",
          flush=True)
    return {"first deploy": first_s, "no-op rerun": noop_s, "agent upgrade": upgrade_s}


def playbook(export: Path, vault_pass: Path, *extra: str) -> tuple[float, dict[str, int]]:
    """Seconds for site.yml and each host's changed= from its PLAY RECAP."""
    seconds, out = timed([str(VENV_BIN / "ansible-playbook"), "-i", str(export / "inventory.yml"),
                          "--vault-password-file", str(vault_pass), "site.yml", *extra])
    recap = {host: int(changed) for host, changed, unreachable, failed in RECAP.findall(out)
             if unreachable == failed == "0"}
    return seconds, recap


def ansible_run(site_dir: Path, tmp: Path, agents: int) -> dict[str, float]:
    export, vault_pass = tmp / "ansible", tmp / "vault-pass"
    timed([str(VENV_BIN / "cmdop-install"), "export-ansible", str(site_dir), str(export),
           "--vault-password-file", str(vault_pass)])
    first_s, first = playbook(export, vault_pass)
    assert len(first) == agents + 1, first
    noop_s, again = playbook(export, vault_pass)
    assert again == dict.fromkeys(first, 0), again
    release = agent_releases.find(site_dir, NEW_AGENT)
    upgrade = tmp / "upgrade.json"
    upgrade.write_text(json.dumps({"cmdop_agent_release": release.facts(switch=True),
                                   "cmdop_agent_switch": True}))
    upgrade_s, upgraded = playbook(export, vault_pass, "--limit", "agents", "-e", f"@{upgrade}")
    assert len(upgraded) == agents and all(upgraded.values()), upgraded
    print(f"ansible: first {sum(first.values())} changed, no-op 0, upgrade "
          f"{sum(upgraded.values())} changed", flush=True)
    return {"first deploy": first_s, "no-op rerun": noop_s, "agent upgrade": upgrade_s}


def main() -> None:
    agents = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            pyinfra = pyinfra_run(lab_site(agents, tmp))
            core.down(LAB)
            ansible = ansible_run(lab_site(agents, tmp), tmp, agents)
        finally:
            core.down(LAB)
    print(f"\n{agents} agent hosts + 1 control-plane host (lab {LAB!r}), seconds")
    print(f"{'step':<14} {'pyinfra':>9} {'ansible':>9} {'ansible/pyinfra':>16}")
    for step, seconds in pyinfra.items():
        print(f"{step:<14} {seconds:>8.1f}s {ansible[step]:>8.1f}s "
              f"{ansible[step] / seconds:>15.1f}x")


if __name__ == "__main__":
    main()
