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
`--only pyinfra` or `--only ansible` runs one side (both at 10 agents took 8.4 minutes);
`--lab NAME` picks the lab (default $CMDOP_TEST_LAB, else mol); `--logs DIR`
keeps each command's output there, every stderr line stamped with its second since the
command started (pyinfra's phases from CMDOP_INSTALL_PROFILE, Ansible's per-task times).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support

from cmdop_install import agent_releases  # noqa: E402
from cmdop_install.lab import core  # noqa: E402
from cmdop_install.sitedir import SiteDir  # noqa: E402
from cmdop_install.siteinit import init_site  # noqa: E402

from tests.support.agent_release import build_agent_wheel  # noqa: E402

NEW_AGENT = "0.1.1"
VENV_BIN = Path(sys.executable).parent
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def lab_site(lab: str, agents: int, tmp: Path) -> Path:
    """The lab's hosts up (fresh ones after a `down`) and the site over them, made once."""
    state = core.up(lab, agents + 1, ())
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


LOGS: list[Path] = []  # --logs DIR, when given


def timed(argv: list[str]) -> tuple[float, str]:
    """Seconds for one command as an operator runs it, and its stdout; stops on failure."""
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
           "CMDOP_INSTALL_PROFILE": "1",
           "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks"}
    started = time.monotonic()
    out: list[str] = []
    with subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env) as run:
        pipe = run.stdout
        assert pipe is not None and run.stderr is not None
        # stdout drained beside stderr: a full pipe would stall the command
        reader = threading.Thread(target=lambda: out.append(pipe.read()))
        reader.start()
        stderr = [f"{time.monotonic() - started:7.1f}  {line}" for line in run.stderr]
        reader.join()
    stdout = out[0]
    seconds = time.monotonic() - started
    if LOGS:
        count = len(list(LOGS[0].iterdir()))
        log = LOGS[0] / f"{count:02d}-{Path(argv[0]).name}-{argv[1]}.log"
        log.write_text(f"$ {' '.join(argv)}\n{seconds:.1f} s\n{''.join(stderr)}\n{stdout}")
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed:\n{stdout[-3000:]}\n"
                         f"{''.join(stderr)[-3000:]}")
    return seconds, stdout


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("agents", nargs="?", type=int, default=10)
    parser.add_argument("--only", choices=("pyinfra", "ansible"))
    parser.add_argument("--lab", default=os.environ.get("CMDOP_TEST_LAB", "mol"))
    parser.add_argument("--logs", type=Path)
    args = parser.parse_args()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        LOGS.append(args.logs)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            if args.only != "ansible":
                figures["pyinfra"] = pyinfra_run(lab_site(args.lab, args.agents, tmp))
                core.down(args.lab)
            if args.only != "pyinfra":
                figures["ansible"] = ansible_run(lab_site(args.lab, args.agents, tmp), tmp,
                                                 args.agents)
        finally:
            core.down(args.lab)
    print(f"\n{args.agents} agent hosts + 1 control-plane host (lab {args.lab!r}), seconds")
    if len(figures) == 1:
        for tool, steps in figures.items():
            for step, seconds in steps.items():
                print(f"{tool} {step:<14} {seconds:>8.1f}s")
        return
    pyinfra, ansible = figures["pyinfra"], figures["ansible"]
    print(f"{'step':<14} {'pyinfra':>9} {'ansible':>9} {'ansible/pyinfra':>16}")
    for step, seconds in pyinfra.items():
        print(f"{step:<14} {seconds:>8.1f}s {ansible[step]:>8.1f}s "
              f"{ansible[step] / seconds:>15.1f}x")


if __name__ == "__main__":
    main()
