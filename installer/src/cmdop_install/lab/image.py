"""The lab image: Debian 12 with systemd as PID 1 and sshd, built once and cached.

No registry can be pulled from, so the root filesystem comes from debootstrap against
the same Debian mirror the machine already uses, and is imported into podman.
"""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cmdop_install.errors import UserError
from cmdop_install.lab import paths, system

INCLUDE = "systemd,systemd-sysv,dbus,openssh-server,python3,sudo,iproute2,procps,ca-certificates"
RELEASE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Units that have nothing to do in a container and would keep the system "degraded".
MASKED_UNITS = (
    "getty@tty1.service",
    "serial-getty@console.service",
    "console-getty.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "sys-kernel-config.mount",
    "systemd-modules-load.service",
)

SSH_DROPIN = """\
# managed by cmdop-install lab: host keys are made on first boot, so every host has its own.
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""

SSHD_CONF = """\
# managed by cmdop-install lab
# The lab's key is bind-mounted per lab, read-only, owned by root.
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/lab_authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
"""


def image_present() -> bool:
    return system.run(["podman", "image", "exists", paths.IMAGE_NAME], check=False).returncode == 0


def ensure_image() -> bool:
    """Make sure the image is in podman; return True when something was built or imported."""
    if image_present():
        return False
    tar = paths.image_tar()
    if not tar.exists():
        build_rootfs_tar(tar)
    _progress("importing the image into podman")
    system.run(
        [
            "podman",
            "import",
            "--change",
            'CMD ["/sbin/init"]',
            "--change",
            "STOPSIGNAL SIGRTMIN+3",
            str(tar),
            paths.IMAGE_NAME,
        ],
        what="podman import of the lab image",
    )
    return True


def remove_image() -> None:
    if image_present():
        system.run(["podman", "rmi", "-f", paths.IMAGE_NAME], what="removing the lab image")
    paths.image_tar().unlink(missing_ok=True)


def build_rootfs_tar(tar: Path) -> None:
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=tar.parent) as tmp:
        root = Path(tmp) / "root"
        _debootstrap(root, host_mirror())
        _configure(root)
        _progress("packing the root filesystem")
        partial = tar.with_suffix(".partial")
        system.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
            what="packing the lab image",
        )
        partial.replace(tar)


def host_mirror() -> str:
    """The Debian mirror this machine's apt already uses (so the lab needs no new egress)."""
    for uri, suites in _debian_sources():
        if any(s.startswith(RELEASE) for s in suites):
            return uri
    return DEFAULT_MIRROR


def _debian_sources() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for stanza in _deb822_stanzas():
        uris = stanza.get("uris", "").split()
        suites = stanza.get("suites", "").split()
        found += [(u, suites) for u in uris if "security" not in u]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb" and not parts[1].startswith("["):
                found.append((parts[1], [parts[2]]))
    return found


def _deb822_stanzas(source_dir: Path = Path("/etc/apt/sources.list.d")) -> list[dict[str, str]]:
    stanzas = []
    for f in sorted(source_dir.glob("*.sources")):
        for block in f.read_text().split("\n\n"):
            fields = {}
            for line in block.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if fields:
                fields["_file"] = f.name
                stanzas.append(fields)
    return stanzas


def _debootstrap(root: Path, mirror: str) -> None:
    _progress(f"debootstrap {RELEASE} from {mirror} (about a minute, once; cached afterwards)")
    argv = ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", RELEASE, str(root), mirror]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: set[str] = set()
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line.strip()])[-5:]
        word = line[3:].split(" ", 1)[0] if line.startswith("I: ") else ""
        if word in {
            "Retrieving",
            "Validating",
            "Extracting",
            "Installing",
            "Unpacking",
            "Configuring",
        }:
            if word not in seen:
                seen.add(word)
                _progress(f"  {time.monotonic() - started:5.0f}s  {word.lower()} packages")
    if proc.wait() != 0:
        raise UserError(f"debootstrap failed: {tail[-1] if tail else 'no output'}")


def _configure(root: Path) -> None:
    _progress("configuring systemd, sshd and the deploy user")
    _copy_apt_settings(root)
    (root / "etc/machine-id").write_text("")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    dropin = root / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "cmdop-lab.conf").write_text(SSH_DROPIN)
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/cmdop-lab.conf").write_text(SSHD_CONF)
    sudoers = root / "etc/sudoers.d/deploy"
    sudoers.write_text("deploy ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    for argv in (
        ["systemctl", "mask", *MASKED_UNITS],
        ["systemctl", "enable", "ssh.service"],
        ["useradd", "--create-home", "--shell", "/bin/bash", "deploy"],
        ["apt-get", "clean"],
    ):
        system.run(["chroot", str(root), *argv], what=f"image: {' '.join(argv[:2])}")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)


def _copy_apt_settings(root: Path) -> None:
    """Apt inside a lab host works like on this machine: same Debian mirrors, same apt.conf.d."""
    target = root / "etc/apt/sources.list.d"
    target.mkdir(parents=True, exist_ok=True)
    debian = [s for s in _deb822_stanzas() if "debian" in s.get("uris", "")]
    if debian:
        (root / "etc/apt/sources.list").write_text("")
        keys = {
            "types": "Types",
            "uris": "URIs",
            "suites": "Suites",
            "components": "Components",
            "signed-by": "Signed-By",
        }
        body = "\n\n".join(
            "\n".join(f"{title}: {s[k]}" for k, title in keys.items() if k in s) for s in debian
        )
        (target / "debian.sources").write_text(body + "\n")
    conf = Path("/etc/apt/apt.conf.d")
    for f in conf.glob("*"):
        if f.is_file():
            shutil.copy2(f, root / "etc/apt/apt.conf.d" / f.name)


def _progress(message: str) -> None:
    print(f"lab: {message}", flush=True)
