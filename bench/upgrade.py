"""A control-plane upgrade under load on the lab: wall time and requests failed.

A lab of one control-plane host and one agent host (its agent long-polls all along), a fresh
site deployed from this commit (N-1). Then, while 3 clients ask the API for the workspace's
machines through nginx (keep-alive, 20 requests/s each): `deploy` of N (this commit plus an
expand migration: a new table), then of a broken N+1 (a good migration, then one that
fails). Printed: the wheel build, each deploy's wall time, requests sent and failed, and the
slowest answer. Run as root: `.venv/bin/python bench/upgrade.py`.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from cmdop_install.lab import core  # noqa: E402
from cmdop_install.manage import api_key_command, parse_api_key  # noqa: E402
from cmdop_install.sitedir import SiteDir  # noqa: E402
from cmdop_install.siteinit import init_site  # noqa: E402

from tests.support import upgrade  # noqa: E402

LAB = "benchupgrade"


def build_wheels(tree: Path) -> float:
    """Seconds to build ``tree``'s server wheelhouse (a deploy then finds it cached)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "from cmdop_install import wheelhouse; "
                    "wheelhouse.build('cmdop-server')"],
                   env={**os.environ, "PYTHONPATH": str(tree / "installer/src")}, check=True)
    return time.monotonic() - started


def under_load(site_dir: Path, tree: Path, load: upgrade.Load) -> tuple[float, int]:
    """(wall seconds, exit status) of deploying ``tree`` while ``load`` runs."""
    load.done, load.failures, load.slowest = 0, [], 0.0
    load.start()
    started = time.monotonic()
    try:
        done = upgrade.deploy(site_dir, tree)
    finally:
        wall = time.monotonic() - started
        load.stop()
    return wall, done.returncode


def main() -> None:
    state = core.up(LAB, 2, ())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            site_dir = base / "labsite"
            site_dir.mkdir(mode=0o700)
            (site_dir / "inventory.py").write_text(
                core.site_inventory_text(state, "host1", ["host2"]))
            init_site(site_dir, key_file=base / "key")
            site = SiteDir.load(site_dir)
            address = state.host("host1").ip
            domain = site.config["site"]["domain"]
            core.map_site_domain(site.inventory.pyinfra_groups(), domain, address)
            first = upgrade.deploy(site_dir)
            assert first.returncode == 0, first.stdout + first.stderr
            out = subprocess.run(core.ssh_argv(state, "host1",
                                               f"sudo {api_key_command('labsite', 'bench')}"),
                                 capture_output=True, text=True, check=True)
            load = upgrade.Load(address=address, domain=domain, ca=site_dir / "pki/ca.crt",
                                api_key=parse_api_key(out.stdout)[1],
                                path="/api/v1/workspaces/labsite/machines")
            runs = {
                "N-1 -> N (expand migration)": {
                    "zz_upgrade_probe": "CREATE TABLE upgrade_probe (id integer)"},
                "N -> broken N+1 (2nd migration fails)": {
                    "zz_upgrade_probe": "CREATE TABLE upgrade_probe (id integer)",
                    "zz_upgrade_probe_2": "CREATE TABLE upgrade_probe_2 (id integer)",
                    "zz_upgrade_fails": "SELECT 1/0"},
            }
            print(f"{'upgrade':<40} {'wheels':>7} {'deploy':>7} {'exit':>4} {'requests':>8} "
                  f"{'failed':>6} {'slowest':>8}", flush=True)
            for number, (name, migrations) in enumerate(runs.items()):
                tree = upgrade.release_tree(base / f"release{number}", migrations)
                wheels = build_wheels(tree)
                wall, status = under_load(site_dir, tree, load)
                print(f"{name:<40} {wheels:>6.1f}s {wall:>6.1f}s {status:>4} {load.done:>8} "
                      f"{len(load.failures):>6} {load.slowest:>7.2f}s", flush=True)
                for failure in load.failures[:10]:
                    print(f"    {failure}")
    finally:
        core.down(LAB)


if __name__ == "__main__":
    main()
