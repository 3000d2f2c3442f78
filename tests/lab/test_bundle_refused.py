"""A tampered offline bundle is refused by `bundle verify`, `deploy --bundle` and `agents
rollout --bundle` before any host is touched (issue 16).

Four copies of the session's bundle, each made by editing the tar in place or copying it
once: one byte flipped inside a .deb, a .deb removed, a file added, the manifest signed by
another key. The site is air1 alone (Postgres, Redis, control plane and agent). Each command
must exit 1 with one line naming the file (or the key). That nothing reached air1 is read on
air1 itself: a counting rule in its own network namespace sees every TCP connection opened
toward it from outside (it does count the SSH connection made after the refusals), and its
package database, users and the folders a deploy writes are as before. The site folder is
left as it was: no deploy record, no rollout state, the lock released.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cmdop_install.bundle import MANIFEST, SIGNATURE, keygen
from cmdop_install.lab import core, system
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.lab.helpers import bundle_site, cli, lab_ssh

pytestmark = pytest.mark.lab

HOST = "air1"
LOCK = ".rollout.lock"


class Openings:
    """A rule with no target (it only counts) at the top of raw PREROUTING inside one lab
    host's network namespace: every TCP SYN reaching the host from outside (loopback left
    out: a deployed host's agent talks to its own control plane there)."""

    def __init__(self, lab: core.LabState, host: str) -> None:
        pid = subprocess.run(
            ["podman", "inspect", "--format", "{{.State.Pid}}", lab.host(host).container],
            env=system.podman_env(), capture_output=True, text=True, check=True).stdout.strip()
        assert pid.isdigit() and pid != "0", f"{host} is not running"
        self.iptables = ["nsenter", f"--net=/proc/{pid}/ns/net", "iptables", "-w", "-t", "raw"]
        self.tag = f"cmdop-test:{lab.name}:{host}:openings"
        self.rule = ["PREROUTING", "!", "-i", "lo", "-p", "tcp", "--syn",
                     "-m", "comment", "--comment", self.tag]

    def __enter__(self) -> Openings:
        subprocess.run([*self.iptables, "-I", *self.rule], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([*self.iptables, "-D", *self.rule], check=False)

    def count(self) -> int:
        listing = subprocess.run([*self.iptables, "-L", "PREROUTING", "-v", "-x", "-n"],
                                 capture_output=True, text=True, check=True).stdout
        counts = [int(line.split()[0]) for line in listing.splitlines()
                  if f"/* {self.tag} */" in line]
        assert len(counts) == 1, f"the counting rule is gone from {self.tag}:\n{listing}"
        return counts[0]


def _flipped(bundle: Path, out: Path, member: tarfile.TarInfo) -> Path:
    """A copy of ``bundle`` with the byte in the middle of ``member`` inverted."""
    shutil.copyfile(bundle, out)
    with open(out, "r+b") as handle:
        handle.seek(member.offset_data + member.size // 2)
        byte = handle.read(1)[0]
        handle.seek(-1, io.SEEK_CUR)
        handle.write(bytes([byte ^ 0xFF]))
    return out


def _without(bundle: Path, out: Path, name: str) -> Path:
    """A copy of ``bundle`` without the member ``name`` (the others byte for byte)."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            if member.name != name:
                dst.addfile(member, src.extractfile(member))
    return out


def _with_extra(bundle: Path, out: Path, name: str) -> Path:
    """A copy of ``bundle`` with one more member, ``name``, that no manifest lists."""
    shutil.copyfile(bundle, out)
    data = b"not in the manifest\n"
    info = tarfile.TarInfo(name)
    info.size = len(data)
    with tarfile.open(out, "a") as tar:
        tar.addfile(info, io.BytesIO(data))
    return out


def _resigned(bundle: Path, out: Path, signature: tarfile.TarInfo, body: bytes,
              tmp: Path) -> Path:
    """A copy of ``bundle`` whose unchanged manifest is signed by a key of its own."""
    other = tmp / "stranger" / "bundle.key"
    keygen(other)
    stranger = serialization.load_pem_private_key(other.read_bytes(), password=None)
    assert isinstance(stranger, Ed25519PrivateKey)
    shutil.copyfile(bundle, out)
    with open(out, "r+b") as handle:
        handle.seek(signature.offset_data)
        handle.write(stranger.sign(body))
    return out


def _tampered(bundle: Path, pub: Path, tmp: Path) -> Iterator[tuple[Path, str]]:
    """Each tampered copy of ``bundle`` (one on disk at a time) and how its refusal starts."""
    with tarfile.open(bundle) as tar:
        debs = sorted((m for m in tar.getmembers() if m.name.endswith(".deb")),
                      key=lambda m: m.size)
        signature = tar.getmember(SIGNATURE)
        body = tar.extractfile(MANIFEST).read()  # type: ignore[union-attr]
    largest, smallest = debs[-1], debs[0]
    extra = "debs/zz-extra_1.0_amd64.deb"
    cases = [
        (lambda out: _flipped(bundle, out, largest), f"{largest.name}: changed"),
        (lambda out: _without(bundle, out, smallest.name), f"{smallest.name}: missing"),
        (lambda out: _with_extra(bundle, out, extra), f"{extra}: extra file"),
        (lambda out: _resigned(bundle, out, signature, body, tmp),
         f"{MANIFEST} is not signed by {pub}"),
    ]
    for index, (make, why) in enumerate(cases):
        bad = make(tmp / f"tampered-{index}.bundle")
        yield bad, f"cmdop-install: error: {bad}: {why}"
        bad.unlink()


def _folder(site: Path) -> dict[str, str]:
    """Every file of the site folder but the lock file, with its mode, time and content."""
    return {str(p.relative_to(site)): f"{p.stat().st_mode:o} {p.stat().st_mtime_ns} "
                                      f"{hashlib.sha256(p.read_bytes()).hexdigest()}"
            for p in sorted(site.rglob("*")) if p.is_file() and p.name != LOCK}


# what a deploy or rollout changes first on a host: packages, users, /etc/hosts, the bundle's
# folder and the releases, and the units
HOST_STATE = ("sudo sh -c 'sha256sum /var/lib/dpkg/status /etc/passwd /etc/group /etc/hosts; "
              "ls -lA --time-style=full-iso /opt /etc/systemd/system /var/lib/cmdop-install "
              "2>&1 || true'")


def test_a_tampered_bundle_is_refused_by_verify_deploy_and_rollout_before_any_host(
        lab, offline_bundle, tmp_path) -> None:
    bundle, pub = offline_bundle
    site = bundle_site(lab, HOST, [HOST], tmp_path, pub)
    commands = {
        "verify": lambda bad: ["bundle", "verify", str(bad), "--pubkey", str(pub)],
        "deploy": lambda bad: ["deploy", str(site), "--bundle", str(bad)],
        "rollout": lambda bad: ["agents", "rollout", str(site), "--bundle", str(bad)],
    }
    files = _folder(site)
    state = lab_ssh(lab, HOST, HOST_STATE)
    assert state.returncode == 0, state.stderr
    with Openings(lab, HOST) as openings:
        for bad, refusal in _tampered(bundle, pub, tmp_path):
            for what, argv in commands.items():
                refused = cli(*argv(bad), check=False)
                assert refused.returncode == 1, (what, refused.stdout + refused.stderr)
                assert refused.stderr.startswith(refusal), (what, refused.stderr)
                assert len(refused.stderr.splitlines()) == 1, (what, refused.stderr)
                assert refused.stdout == "", (what, refused.stdout)
        assert openings.count() == 0, "a refused command connected to air1"
        # the rule does see a connection: this one
        after = lab_ssh(lab, HOST, HOST_STATE)
        assert openings.count() > 0
    assert after.returncode == 0, after.stderr
    assert after.stdout == state.stdout
    assert _folder(site) == files
    lock = site / LOCK
    if lock.exists():  # the lock's own file, empty and no longer held
        assert lock.read_bytes() == b""
        with open(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # and the bundle itself, untouched, verifies
    assert cli("bundle", "verify", str(bundle), "--pubkey", str(pub)).returncode == 0
