"""What goes into the offline bundle, fetched on a connected machine (``bundle build``).

Debian packages: the closure is computed by apt itself against the dpkg status of a minimal
Debian 12 (the lab image's, the truthful base of a fresh host), never listed by hand: apt
prints every .deb it would fetch with its SHA-256 from Debian's signed indexes, downloads
them into a cache under ~/.cache/cmdop-install/ (a rerun fetches nothing new), and each file
is checked against that hash. Python: the wheelhouses the online deploy uses, and every
dependency wheel's SHA-256 must be one ``uv.lock`` pins.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cmdop_install import __version__, bundle, wheelhouse
from cmdop_install.errors import UserError

PACKAGES = ("cmdop-server", "cmdop-agent")
ALL_GROUPS = {"postgres", "redis", "control_plane", "agents"}
# apt-get --print-uris: 'URI' file size [hash] (apt 2.6 leaves the hash out: see _index_hashes)
_URI_LINE = re.compile(r"^'(?P<uri>[^']+)' (?P<file>\S+\.deb) (?P<size>\d+)")


def cache_dir() -> Path:
    return wheelhouse.cache_dir().parent / "bundle"


@dataclass(frozen=True)
class Deb:
    file: str
    sha256: str
    path: Path


def build(out: Path, signing_key: Path, centrifugo: Path | None, pg_major: int,
          progress: Callable[[str], None]) -> dict:
    from cmdop_install.deploys.site import debian_packages

    files: dict[str, Path] = {}
    for package in PACKAGES:
        progress(f"wheels: {package}")
        folder = wheelhouse.build(package)
        check_locked_hashes(folder, package)
        for f in sorted(folder.iterdir()):
            if f.suffix == ".whl" or f.name == "requirements.txt":
                files[f"wheels/{package}/{f.name}"] = f
    wanted = debian_packages(ALL_GROUPS, pg_major)
    progress(f"debian packages: closure of {' '.join(wanted)} on a minimal Debian 12")
    with tempfile.TemporaryDirectory(prefix="cmdop-bundle-") as tmp:
        work = Path(tmp)
        debs = fetch_debs(wanted, base_status(work), progress)
        for deb in debs:
            files[f"debs/{deb.file}"] = deb.path
        files["debs/Packages"] = packages_index(debs, work)
        if centrifugo is not None:
            if not centrifugo.is_file():
                raise UserError(f"{centrifugo}: no such file (--centrifugo-binary)")
            files["centrifugo/centrifugo"] = centrifugo
        sbom = work / "sbom.cdx.json"
        sbom.write_text(cyclonedx(files))
        files["sbom.cdx.json"] = sbom
        progress(f"signing the manifest of {len(files)} files")
        meta = {"target": "debian-12-amd64", "installer": __version__,
                "debian_packages": wanted, "wheelhouses": list(PACKAGES)}
        return bundle.write_bundle(out, files, meta, signing_key)


def check_locked_hashes(folder: Path, package: str) -> None:
    """Every dependency wheel in ``folder`` has a SHA-256 that uv.lock pins (ours are built)."""
    root = wheelhouse.repo_root()
    assert root is not None  # wheelhouse.build refused already
    pinned = set()
    for entry in tomllib.loads((root / "uv.lock").read_text()).get("package", []):
        for wheel in entry.get("wheels", []):
            pinned.add(wheel["hash"].removeprefix("sha256:"))
    ours = {p.replace("-", "_") for p in ("cmdop-server", "cmdop-agent", "cmdop-install")}
    for wheel in sorted(folder.glob("*.whl")):
        if wheel.name.split("-", 1)[0] in ours:
            continue
        if bundle.sha256_file(wheel) not in pinned:
            raise UserError(f"{wheel}: its SHA-256 is not pinned in uv.lock (remove the folder "
                            f"{folder} and rerun to download it again)")


def base_status(work: Path) -> Path:
    """The dpkg status of the lab image: the packages a fresh Debian 12 host already has."""
    from cmdop_install.lab.paths import image_tar

    image = image_tar()
    if not image.is_file():
        raise UserError(f"{image}: no Debian 12 base image to compute the package closure "
                        "against (run `cmdop-install lab up` once to build it)")
    with tarfile.open(image) as tar:
        for name in ("var/lib/dpkg/status", "./var/lib/dpkg/status"):
            try:
                member = tar.getmember(name)
            except KeyError:
                continue
            handle = tar.extractfile(member)
            if handle is not None:
                status = work / "status"
                status.write_bytes(handle.read())
                return status
    raise UserError(f"{image}: has no var/lib/dpkg/status (rebuild it: "
                    "cmdop-install lab down --purge, then lab up)")


def _apt(status: Path, archives: Path, *args: str) -> list[str]:
    return ["apt-get", "-q", "-y", "--no-install-recommends",
            "-o", f"Dir::State::status={status}", "-o", f"Dir::Cache::archives={archives}",
            # the private status and archives are ours alone: no need for the system's locks
            "-o", "Debug::NoLocking=1", *args]


def fetch_debs(wanted: list[str], status: Path, progress: Callable[[str], None]) -> list[Deb]:
    empty = status.parent / "plan"
    (empty / "partial").mkdir(parents=True)
    # With an empty archive folder apt prints every file of the closure, cached or not.
    plan = _run(_apt(status, empty, "install", "--print-uris", *wanted), "computing the closure")
    debs = [m for m in map(_URI_LINE.match, plan.splitlines()) if m]
    if not debs:
        raise UserError("apt printed no package to fetch: is this machine's apt Debian 12 amd64?")
    hashes = _index_hashes(status, [m["file"] for m in debs])
    cache = cache_dir() / "debs"
    (cache / "partial").mkdir(parents=True, exist_ok=True)
    missing = [m for m in debs if not (cache / m["file"]).is_file()]
    progress(f"debian packages: {len(debs)} in the closure, {len(missing)} to download")
    if missing:
        argv = _apt(status, cache, "install", "--download-only", *wanted)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        tail = ""
        for line in proc.stdout:
            tail = line.strip() or tail
            if line.startswith("Get:"):
                progress("  " + line.split(" ", 1)[1].strip())
        if proc.wait() != 0:
            raise UserError(f"downloading Debian packages: {tail}")
    out = []
    for m in debs:
        path = cache / m["file"]
        if not path.is_file() or bundle.sha256_file(path) != hashes[m["file"]]:
            path.unlink(missing_ok=True)
            raise UserError(f"{path}: missing or not the file Debian's index names "
                            "(removed; rerun bundle build)")
        # the pool's name: apt's cache writes an epoch as %3a, which a file: URI would decode
        out.append(Deb(re.sub(r"_\d+%3a", "_", m["file"]), hashes[m["file"]], path))
    return out


def _index_hashes(status: Path, files: list[str]) -> dict[str, str]:
    """Each .deb's SHA-256 from Debian's indexes (apt checked their signatures on update)."""
    pins = {}
    for name in files:
        package, version, _arch = name.removesuffix(".deb").split("_")
        pins[f"{package}={version.replace('%3a', ':')}"] = name
    text = _run(["apt-cache", "-o", f"Dir::State::status={status}", "show", *pins],
                "reading the Debian package indexes")
    hashes = {}
    for record in text.split("\n\n"):
        fields = dict(re.findall(r"(?m)^(Package|Version|SHA256): (\S+)$", record))
        pin = f"{fields.get('Package')}={fields.get('Version')}"
        if pin in pins and "SHA256" in fields:
            hashes[pins[pin]] = fields["SHA256"]
    for name in files:
        if name not in hashes:
            raise UserError(f"{name}: no SHA-256 in Debian's package index (run apt-get update)")
    return hashes


def packages_index(debs: list[Deb], work: Path) -> Path:
    """The flat repository's Packages file (dpkg-scanpackages over the closure only)."""
    repo = work / "repo"
    repo.mkdir()
    for deb in debs:
        (repo / deb.file).symlink_to(deb.path)
    index = _run(["dpkg-scanpackages", "-m", ".", "/dev/null"], "indexing the Debian packages",
                 cwd=repo)
    out = work / "Packages"
    out.write_text(index)
    return out


def cyclonedx(files: dict[str, Path]) -> str:
    """A CycloneDX 1.5 JSON SBOM: one component per .deb, wheel and the Centrifugo binary."""
    import json

    components = []
    for name, path in sorted(files.items()):
        base = Path(name).name
        if base.endswith(".deb"):
            pkg, version, arch = base.removesuffix(".deb").split("_")
            version = version.replace("%3a", ":")
            purl = f"pkg:deb/debian/{pkg}@{version}?arch={arch}&distro=debian-12"
        elif base.endswith(".whl"):
            pkg, version = base.split("-")[:2]
            purl = f"pkg:pypi/{pkg.replace('_', '-').lower()}@{version}"
        elif name == "centrifugo/centrifugo":
            pkg, version, purl = "centrifugo", "unknown", ""
        else:
            continue
        component = {"type": "application" if not purl else "library", "name": pkg,
                     "version": version, "bom-ref": name,
                     "hashes": [{"alg": "SHA-256", "content": bundle.sha256_file(path)}]}
        if purl:
            component["purl"] = purl
        components.append(component)
    return json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
                       "metadata": {"component": {"type": "application", "name": "cmdop-bundle",
                                                  "version": __version__}},
                       "components": components}, indent=1) + "\n"


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    except FileNotFoundError:
        raise UserError(f"{what}: {argv[0]} is not installed (run scripts/bootstrap.sh)") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{what}: {tail[0]}")
    return proc.stdout
