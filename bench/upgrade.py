"""A control-plane upgrade under load on the lab: wall time and requests failed.

A lab of one control-plane host and one agent host (its agent long-polls all along), a fresh
site deployed from this commit (N-1). Then, while 3 clients ask the API for the workspace's
machines through nginx (keep-alive, 20 requests/s each): `deploy` of N (this commit plus an
expand migration: a new table), then of a broken N+1 (a good migration, then one that
fails). Printed: the wheel build, each deploy's wall time, requests sent and failed, and the
slowest answer. Run as root: `.venv/bin/python bench/upgrade.py`.

`--from REF` upgrades from a real earlier release instead: a git worktree of REF with its
own virtualenv (its scripts/bootstrap.sh) inits and deploys the site with its own
installer, so the hosts hold what that release installed (e.g. 416222f: the control plane
in /opt/cmdop/venv, before releases); then this commit's installer (``git archive HEAD``)
deploys the same site folder under load: the 3 keep-alive clients above and
tests/support/site_load.py (a browser signed in before, OAuth refreshes from a token
issued before, an API key issued before, an agent session typing an echo every 2 s through
the agent enrolled before). Printed: each deploy's wall time, requests and failures per
kind, the echoes lost or repeated, whether both databases have every migration, the
release layout, and a rerun's change count (0 expected). Run as root under the lab lock:
`flock /tmp/cmdop-lab-run.lock .venv/bin/python bench/upgrade.py --from 416222f`
(lab name: $CMDOP_BENCH_LAB, default benchupgrade).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from cmdop_install.lab import core  # noqa: E402
from cmdop_install.manage import (  # noqa: E402
    api_key_command,
    manage_command,
    parse_api_key,
)
from cmdop_install.secrets import SecretStore  # noqa: E402
from cmdop_install.sitedir import SiteDir  # noqa: E402
from cmdop_install.siteinit import init_site  # noqa: E402

from tests.support import upgrade  # noqa: E402
from tests.support.site_load import Endpoint, SiteLoad  # noqa: E402

LAB = os.environ.get("CMDOP_BENCH_LAB", "benchupgrade")


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


def this_commit() -> None:
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


def _ssh(state: core.LabState, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(core.ssh_argv(state, "host1", command), capture_output=True, text=True,
                          check=False, timeout=300)


def _timed(what: str, argv: list[str], **kwargs) -> float:
    """Seconds ``argv`` takes; it must succeed."""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - started


def _deploy_logged(site_dir: Path, tree: Path) -> tuple[subprocess.CompletedProcess[str],
                                                         list[str]]:
    """upgrade.deploy, verbose, with each progress line stamped with its second."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cmdop_install.cli", "deploy", str(site_dir), "--verbose"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(tree / "installer/src")})
    assert proc.stderr is not None and proc.stdout is not None
    progress = [f"{time.monotonic() - started:6.1f}s {line.rstrip()}" for line in proc.stderr]
    stdout = proc.stdout.read()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=60), stdout,
                                       "\n".join(progress)), progress


def _previous_api_key(old: Path, state: core.LabState, workspace: str) -> str:
    """An API key issued by the previous release, with its own management command line."""
    command = subprocess.run(
        [str(old / ".venv/bin/python"), "-c",
         "from cmdop_install.deploys.control_plane import manage_command; "
         f"print(manage_command('issue_api_key --workspace {workspace} --name before'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    out = _ssh(state, f"sudo {command}")
    assert out.returncode == 0, out.stderr
    return parse_api_key(out.stdout)[1]


def _migrated(state: core.LabState) -> str:
    """Whether both databases have every migration of the release serving (migrate --check)."""
    answers = []
    for alias in ("default", "audit"):
        check = manage_command(f"migrate --check --database {alias}", audit_admin=True)
        answers.append(f"{alias} {'yes' if _ssh(state, f'sudo {check}').returncode == 0 else 'NO'}")
    return ", ".join(answers)


def from_release(ref: str) -> None:
    """The site deployed by release ``ref``'s installer, upgraded by this commit's under load."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        started = time.monotonic()
        old = upgrade.previous_checkout(ref, base / "previous")
        print(f"checkout of {ref} with its own venv: {time.monotonic() - started:.1f}s",
              flush=True)
        state = core.up(LAB, 2, ())
        try:
            _upgrade_site(ref, old, state, base)
        finally:
            core.down(LAB)
            upgrade.remove_checkout(old)


def _upgrade_site(ref: str, old: Path, state: core.LabState, base: Path) -> None:
    site_dir = base / "labsite"
    site_dir.mkdir(mode=0o700)
    (site_dir / "inventory.py").write_text(core.site_inventory_text(state, "host1", ["host2"]))
    old_cli = str(old / ".venv/bin/cmdop-install")
    _timed(f"{ref} init", [old_cli, "init", str(site_dir), "--key-file", str(base / "key")])
    # An earlier release's nginx refused a burst of 6 sign-in requests and counted a session's
    # input and output reads as session operations: limits high enough for the load's own
    # pacing (written for this commit's limits), the same before and after the upgrade
    toml = site_dir / "site.toml"
    text = toml.read_text()
    for name, value in (("auth_per_minute", 600), ("session_per_minute", 6000)):
        assert text.count(f"\n{name} = ") == 1, name
        text = re.sub(rf"\n{name} = \d+", f"\n{name} = {value}", text)
    toml.write_text(text)
    site = SiteDir.load(site_dir)
    address, domain = state.host("host1").ip, site.config["site"]["domain"]
    core.map_site_domain(site.inventory.pyinfra_groups(), domain, address)
    first = _timed(f"{ref} deploy", [old_cli, "deploy", str(site_dir)], env=upgrade.uv_on_path(),
                   timeout=1500)
    print(f"{ref}'s deploy (its wheels, its layout): {first:.1f}s", flush=True)
    print("host1 before: " + _ssh(state, "ls -d /opt/cmdop/* /opt/cmdop/server/* 2>&1").stdout
          .replace("\n", " "), flush=True)
    key = _previous_api_key(old, state, site.name)
    owner = site.config["site"]["owner_email"] or f"admin@{domain}"
    password = SecretStore.open(site_dir, str(base / "key")).get("owner_password")
    load = SiteLoad(Endpoint(address, domain, str(site_dir / "pki/ca.crt")), site.name, owner,
                    password, key, machine_hostname="host2")
    load.prepare()  # signed in, tokens and a session from before the upgrade
    keep_alive = upgrade.Load(address=address, domain=domain, ca=site_dir / "pki/ca.crt",
                              api_key=key, path=f"/api/v1/workspaces/{site.name}/machines")
    tree = upgrade.release_tree(base / "head", {})
    wheels = build_wheels(tree)
    load.start()
    keep_alive.start()
    time.sleep(10)  # the load alone first: every kind served before the deploy starts
    started = time.monotonic()
    done, progress = _deploy_logged(site_dir, tree)
    wall = time.monotonic() - started
    served = load.served()
    after = load.wait_served(served, SiteLoad.KINDS)  # each kind served again, on N
    keep_alive.stop()
    counts = load.stop()
    lost, repeated = load.echoes_lost_and_repeated()
    print(f"this commit's deploy: exit {done.returncode}, {wall:.1f}s (+{wheels:.1f}s wheels); "
          f"last line: {done.stdout.strip().splitlines()[-1:]}", flush=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:])
    print(f"keep-alive clients: {keep_alive.done} requests, {len(keep_alive.failures)} failed, "
          f"slowest {keep_alive.slowest:.2f}s")
    for failure in keep_alive.failures[:10]:
        print(f"    {failure}")
    failed = {k: sum(f.startswith(f"{k}: ") for f in counts.failures) for k in counts.by_kind}
    print(f"site load: {counts.requests} requests, {len(counts.failures)} failed "
          f"({', '.join(f'{k} {failed[k]}/{n}' for k, n in sorted(counts.by_kind.items()))}); "
          f"every kind served after the deploy: {after}")
    for failure in counts.failures[:10]:
        print(f"    {failure}")
    print(f"agent session: {len(load.typed)} echoes typed, lost {lost}, repeated {repeated}")
    failed_at = [s.at - started for s in counts.samples if not s.ok]
    failed_at += [at - started for at in keep_alive.failed_at]
    if failed_at:
        bins: dict[int, int] = {}
        for at in failed_at:
            bins[int(at // 5) * 5] = bins.get(int(at // 5) * 5, 0) + 1
        print("failed requests (both loads) by second of the deploy: " + ", ".join(
            f"{start}-{start + 5}s {n}" for start, n in sorted(bins.items())))
        print("the deploy's changes by second:")
        for line in progress:
            if " changed " in line:
                print(f"    {line}")
        print(_ssh(state, "sudo grep -hE 'ERROR|FATAL' /var/log/postgresql/*.log | tail -n 15; "
                          "sudo journalctl -q -u cmdop-server --since -15min | "
                          "grep -iE 'error|denied|exception' | tail -n 15").stdout)
    print(f"migrations applied: {_migrated(state)}")
    print("host1 after: " + _ssh(state, "ls -d /opt/cmdop/* /opt/cmdop/server/* 2>&1; readlink "
                                        "/opt/cmdop/server/current").stdout.replace("\n", " "))
    rerun = upgrade.deploy(site_dir, tree)
    print(f"rerun: exit {rerun.returncode}, {rerun.stdout.strip().splitlines()[-1:]}")
    if rerun.returncode != 0 or not rerun.stdout.strip().endswith("0 change(s) on 2 host(s)"):
        print(rerun.stdout[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="ref", help="upgrade from this git commit's installer")
    ref = parser.parse_args().ref
    if ref:
        from_release(ref)
    else:
        this_commit()


if __name__ == "__main__":
    main()
