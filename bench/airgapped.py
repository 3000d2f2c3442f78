"""The offline bundle: its size, its build time cold and warm, and the same single-node site's
first deploy online (host1: Debian's mirror, wheels uploaded from this machine) and
air-gapped (air1: from the bundle alone), on one lab.

Cold: an empty HOME (no wheelhouse, .deb, pip or uv cache); warm: the same HOME again.
A lab of host1 + air1 (CMDOP_BENCH_LAB, default benchair), brought down at the end.
Run as root, under the lab lock:
`flock /tmp/cmdop-lab-run.lock .venv/bin/python bench/airgapped.py`.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cmdop_install import bundle
from cmdop_install.deploy import deploy_site
from cmdop_install.lab import core
from cmdop_install.sitedir import SiteDir
from cmdop_install.siteinit import init_site

LAB = os.environ.get("CMDOP_BENCH_LAB", "benchair")
CLI = str(Path(sys.executable).parent / "cmdop-install")


def build(home: Path, key: Path, out: Path) -> float:
    started = time.monotonic()
    subprocess.run([CLI, "bundle", "build", "--out", str(out), "--signing-key", str(key)],
                   env={**os.environ, "HOME": str(home)}, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def first_deploy(state: core.LabState, host: str, tmp: Path,
                 offline: tuple[Path, Path] | None) -> float:
    """Seconds for the first deploy of a site whose every group is ``host`` (agent too)."""
    site_dir = tmp / f"site-{host}"
    site_dir.mkdir(mode=0o700)
    (site_dir / "inventory.py").write_text(core.site_inventory_text(state, host, [host]))
    init_site(site_dir, key_file=tmp / f"{host}.key")
    if offline is not None:
        toml = site_dir / "site.toml"
        toml.write_text(toml.read_text().replace('\npubkey = ""', f'\npubkey = "{offline[1]}"'))
    site = SiteDir.load(site_dir)
    core.map_site_domain(site.inventory.pyinfra_groups(), site.config["site"]["domain"],
                         state.host(host).ip)
    started = time.monotonic()
    result = deploy_site(site, bundle_file=offline[0] if offline else None)
    took = time.monotonic() - started
    if result.failed:
        raise SystemExit(f"the deploy on {host} failed: {', '.join(result.failed)}")
    return took


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-air-") as name:
        tmp = Path(name)
        key = tmp / "keys" / "bundle.key"
        pub = bundle.keygen(key)
        home = tmp / "home"
        home.mkdir()
        out = tmp / "cmdop.bundle"
        try:
            state = core.up(LAB, 1, ("air1",))  # the image the Debian closure is computed on
            cold = build(home, key, out)
            warm = build(home, key, out)
            files = len(bundle.verify(out, pub).manifest["files"])
            print(f"bundle: {out.stat().st_size / 1e6:.1f} MB, {files} files; "
                  f"build cold {cold:.1f} s, warm {warm:.1f} s", flush=True)
            online = first_deploy(state, "host1", tmp, None)
            offline = first_deploy(state, "air1", tmp, (out, pub))
            print(f"single-node first deploy (Postgres, Redis, nginx, control plane, agent): "
                  f"online on host1 {online:.0f} s, air-gapped from the bundle on air1 "
                  f"{offline:.0f} s")
        finally:
            core.down(LAB)


if __name__ == "__main__":
    main()
