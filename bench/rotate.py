"""Secret rotation on a lab site under load: wall time per secret, requests and failures.

A lab of one control-plane host and one agent host, a fresh site deployed first (not
timed). A load (tests/support/site_load.py: sign-ins, a browser session, OAuth token
refreshes, API-key calls, an agent session echoing input through the agent's long-poll)
runs all along: first 30 s alone (the baseline), then while each rotatable secret is
rotated with the real CLI (`rotate SITE NAME`, then `rotate SITE --finish`; the grace
period between them is not counted), then `rotate --all` and its --finish once. The
internal PKI's rotations are names too (pki_leaves, pki_ca): the load trusts the site's
pki/ca-bundle.crt as it reads at each request, as a client given that file would.
Printed per rotation: seconds of rotate and of --finish, the requests the load got
served meanwhile, how many failed, and p50/p99 latency of the short requests (browse and
API key) and of the agent echo round trip, beside the baseline's.

Run as root, alone on the machine's lab lock:
`flock /tmp/cmdop-lab-run.lock .venv/bin/python bench/rotate.py [NAME...]` (lab name:
$CMDOP_BENCH_LAB, default benchrotate). With names (and/or --all), only those are run.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from cmdop_install.deploy import deploy_site  # noqa: E402
from cmdop_install.lab import core, network  # noqa: E402
from cmdop_install.manage import api_key_command, parse_api_key  # noqa: E402
from cmdop_install.rotation_state import PG_LOGINS, PKI_CA, PKI_LEAVES, ROTATABLE  # noqa: E402
from cmdop_install.runner import read_facts  # noqa: E402
from cmdop_install.sitedir import SiteDir  # noqa: E402
from cmdop_install.siteinit import init_site  # noqa: E402

from tests.support.site_load import BundleEndpoint, Counts, SiteLoad, percentile  # noqa: E402

LAB = os.environ.get("CMDOP_BENCH_LAB", "benchrotate")
BASELINE_S = 30.0
SHORT = ("browse", "api-key")


def _cli(*args: str) -> float:
    """Seconds the real command line takes; it must succeed."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cmdop_install.cli", *args, "--yes"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"cmdop-install {' '.join(args)} failed: {proc.stderr.strip()}")
    return time.monotonic() - started


def _api_key(site: SiteDir) -> str:
    command = api_key_command(site.name, "bench-rotate")
    facts = read_facts(site.inventory.pyinfra_groups(), {"key": command}, limit=["host1"])
    return parse_api_key(facts.hosts["host1"].facts["key"])[1]


def _window(counts: Counts, start: float, end: float) -> str:
    samples = [s for s in counts.samples if start <= s.at <= end]
    short = [s.seconds * 1000 for s in samples if s.kind in SHORT]
    echo = [s.seconds * 1000 for s in samples if s.kind == "agent-session"]
    failed = sum(not s.ok for s in samples)
    return (f"{len(samples):>5} {failed:>6} {percentile(short, 0.5):>7.0f} "
            f"{percentile(short, 0.99):>7.0f} {percentile(echo, 0.5):>8.0f} "
            f"{percentile(echo, 0.99):>8.0f}")


def main() -> None:
    # one name per rotation: either blue/green login name rotates the app's login
    singles = [n for n, why in ROTATABLE.items() if why is None and n != PG_LOGINS[1]]
    singles += [PKI_LEAVES, PKI_CA]
    chosen = sys.argv[1:]
    unknown = sorted(set(chosen) - set(singles) - {PG_LOGINS[1], "--all"})
    if unknown:
        raise SystemExit(f"not a rotatable secret: {', '.join(unknown)}")
    runs = [[n] for n in chosen] if chosen else [[n] for n in singles] + [["--all"]]
    state = core.up(LAB, 2, ())
    rows: list[tuple[str, float, float, float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            site_dir = Path(tmp) / "site"
            site_dir.mkdir(mode=0o700)
            (site_dir / "inventory.py").write_text(
                core.site_inventory_text(state, "host1", ["host2"]))
            init_site(site_dir, key_file=Path(tmp) / "key")
            toml = site_dir / "site.toml"
            toml.write_text(toml.read_text().replace(
                '\nadmin_sources = ""', f'\nadmin_sources = "{network.gateway(state.subnet)}"'))
            site = SiteDir.load(site_dir)
            domain = site.config["site"]["domain"]
            core.map_site_domain(site.inventory.pyinfra_groups(), domain,
                                 state.host("host1").ip)
            assert not deploy_site(site).failed
            email = site.config["site"]["owner_email"] or f"admin@{domain}"
            endpoint = BundleEndpoint(state.host("host1").ip, domain,
                                      site_dir / "pki/ca-bundle.crt")
            load = SiteLoad(endpoint, site.name, email, site.secrets["owner_password"],
                            _api_key(site), machine_hostname="host2")
            load.prepare()
            load.start()
            baseline = time.monotonic()
            time.sleep(BASELINE_S)  # the load alone: the figures to compare with
            rows.append(("(no rotation)", baseline, time.monotonic(), 0.0, 0.0))
            for names in runs:
                start = time.monotonic()
                rotate_s = _cli("rotate", str(site_dir), *names)
                finish_s = _cli("rotate", str(site_dir), "--finish")
                rows.append((" ".join(names), start, time.monotonic(), rotate_s, finish_s))
            counts = load.stop()
    finally:
        core.down(LAB)
    print(f"{'rotation':<26} {'rotate s':>8} {'finish s':>8} {'reqs':>5} {'failed':>6} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'echo p50':>8} {'echo p99':>8}")
    for name, start, end, rotate_s, finish_s in rows:
        print(f"{name:<26} {rotate_s:>8.1f} {finish_s:>8.1f} {_window(counts, start, end)}")
    print(f"load: {counts.requests} requests, {len(counts.failures)} failed "
          f"({', '.join(f'{k} {n}' for k, n in sorted(counts.by_kind.items()))})")
    for failure in counts.failures[:10]:
        print(f"  {failure}")


if __name__ == "__main__":
    main()
