"""Seconds for `lab up --hosts 5` cold (image build included) and warm, and for `lab down`.

Run as root: `.venv/bin/python bench/lab_up.py [--skip-cold]`. Cold removes the cached
image first (`lab down --purge`), so it rebuilds it with debootstrap from the mirror.
"""

import argparse
import subprocess
import sys
import time

LAB = "bench"


def cli(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "cmdop_install.cli", *args], check=True, stdout=subprocess.DEVNULL
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-cold", action="store_true", help="keep the cached image")
    parser.add_argument("--hosts", type=int, default=5)
    args = parser.parse_args()
    n = str(args.hosts)
    up = ("lab", "up", "--name", LAB, "--hosts", n)
    down = ("lab", "down", "--name", LAB)
    if not args.skip_cold:
        cli(*down, "--purge")
        report(f"lab up --hosts {n} cold (image build included)", cli(*up))
        report("lab down", cli(*down))
    report(f"lab up --hosts {n} warm (cached image)", cli(*up))
    report("lab up again (nothing to change)", cli(*up))
    report("lab down", cli(*down))


def report(what: str, seconds: float) -> None:
    print(f"{what:<48} {seconds:6.1f} s", flush=True)

if __name__ == "__main__":
    main()
