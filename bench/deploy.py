"""Seconds for a first full deploy, a no-op redeploy, and how they grow with the fleet.

For N in (1, 5, 10) agent hosts: a lab of 1 control-plane host + N agents, a fresh site,
`deploy` (first: packages, databases, control plane, enrollment of every agent), then
`deploy` again (nothing to change), then `agents rollout` of a new agent version (a canary,
then batches of 25 %, each gated on every agent reporting the new version).
Run as root: `.venv/bin/python bench/deploy.py [N ...]`.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from cmdop_install.deploy import deploy_site  # noqa: E402
from cmdop_install.lab import core  # noqa: E402
from cmdop_install.rollout import Rollout  # noqa: E402
from cmdop_install.sitedir import SiteDir  # noqa: E402
from cmdop_install.siteinit import init_site  # noqa: E402

from tests.support.agent_release import build_agent_wheel  # noqa: E402

LAB = "benchdeploy"


def measure(agents: int) -> tuple[float, float, int, float]:
    state = core.up(LAB, agents + 1, ())
    with tempfile.TemporaryDirectory() as tmp:
        site_dir = Path(tmp) / "site"
        site_dir.mkdir(mode=0o700)
        names = [f"host{i}" for i in range(2, agents + 2)]
        (site_dir / "inventory.py").write_text(core.site_inventory_text(state, "host1", names))
        init_site(site_dir, key_file=Path(tmp) / "key")
        site = SiteDir.load(site_dir)
        core.map_site_domain(
            site.inventory.pyinfra_groups(), site.config["site"]["domain"], state.host("host1").ip
        )
        started = time.monotonic()
        first = deploy_site(site)
        first_s = time.monotonic() - started
        assert not first.failed, first.failed
        # a no-op deploy as the command runs it: the site loaded afresh
        started = time.monotonic()
        again = deploy_site(SiteDir.load(site_dir))
        noop_s = time.monotonic() - started
        for h in again.hosts.values():
            for op in h.ops:
                if op.changed:
                    print(f"    not idempotent: {h.name}: {op.name}", flush=True)
        releases = site_dir / "agent-releases"
        releases.mkdir()
        shutil.copy(build_agent_wheel("0.1.1", Path(tmp)), releases)
        started = time.monotonic()
        outcome = Rollout(SiteDir.load(site_dir), lambda line: None, health_timeout=120).run(
            "0.1.1", "25%", 1, "0"
        )
        rollout_s = time.monotonic() - started
        assert not outcome.failed and not outcome.stopped, outcome
    core.down(LAB)
    return first_s, noop_s, again.changes, rollout_s


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1, 5, 10]
    print(
        f"{'agents':>6} {'hosts':>5} {'first deploy':>13} {'no-op redeploy':>15} "
        f"{'changes':>8} {'rollout':>9}"
    )
    for n in sizes:
        first_s, noop_s, changes, rollout_s = measure(n)
        print(
            f"{n:>6} {n + 1:>5} {first_s:>12.1f}s {noop_s:>14.1f}s {changes:>8} {rollout_s:>8.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
