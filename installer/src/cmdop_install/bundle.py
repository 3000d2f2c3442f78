"""The signed offline bundle: one tar, a manifest of every file's SHA-256, an Ed25519 signature.

Layout inside the tar (no folders of its own, no links, nothing outside these names)::

    manifest.json        {"format", "target", "debian_packages", "files": {path: {sha256, size}}}
    manifest.json.sig    Ed25519 signature over manifest.json's exact bytes (64 bytes)
    debs/                every .deb of the closure plus Packages, a flat apt repository
    wheels/<package>/    each Python package's wheelhouse (wheels + requirements.txt)
    centrifugo/centrifugo  only when built with --centrifugo-binary
    sbom.cdx.json        CycloneDX JSON of every package inside

``verify`` checks the signature first, then that the tar holds exactly the manifest's files
with their hashes: a missing, extra or changed file is refused by name. The signing key is
the operator's own (``bundle keygen``), never a site secret: whoever holds it can make hosts
install anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cmdop_install.errors import UserError
from cmdop_install.fsutil import make_dir, write_atomic

FORMAT = "cmdop-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
TOP_FOLDERS = ("debs", "wheels", "centrifugo")
TOP_FILES = ("sbom.cdx.json",)


def default_key_path() -> Path:
    return Path.home() / ".config" / "cmdop-install" / "bundle-signing.key"


def keygen(key_path: Path) -> Path:
    """A new Ed25519 signing key at ``key_path`` (0600) and its public key beside it (.pub)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub_path = key_path.with_name(key_path.name + ".pub")
    if key_path.exists() or pub_path.exists():
        raise UserError(f"{key_path}: a signing key is already there (keep it, or choose "
                        "another --out; a new key cannot verify bundles signed by the old one)")
    if (key_path.parent / "site.toml").exists():
        raise UserError(f"{key_path.parent}: this is a site folder; keep the signing key apart "
                        "from the site (default: ~/.config/cmdop-install/)")
    key = Ed25519PrivateKey.generate()
    make_dir(key_path.parent)
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), mode=0o600)
    write_atomic(pub_path, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), mode=0o644)
    return pub_path


def _load_private(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise UserError(f"{path}: no signing key (make one with `cmdop-install bundle keygen`, "
                        "or pass --signing-key)") from None
    except (ValueError, TypeError):
        raise UserError(f"{path}: not an unencrypted PEM private key "
                        "(make one with `cmdop-install bundle keygen`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path}: not an Ed25519 key (make one with `cmdop-install bundle keygen`)")
    if path.stat().st_mode & 0o077:
        raise UserError(f"{path}: readable by others; run chmod 600 {path}")
    return key


def _load_public(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: no such public key (bundle keygen wrote it next to the "
                        "signing key, as <key>.pub)") from None
    except ValueError:
        raise UserError(f"{path}: not a PEM public key (use the .pub file bundle keygen wrote)"
                        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path}: not an Ed25519 public key")
    return key


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bundle(out: Path, files: dict[str, Path], meta: dict, signing_key: Path) -> dict:
    """Sign a manifest of ``files`` (bundle path -> local file) and write the tar to ``out``.

    The tar is written next to ``out`` and renamed into place, so a reader never sees half a
    bundle. Entries are normalised (owner root, mode 0644, time 0): the same inputs give the
    same bytes.
    """
    key = _load_private(signing_key)
    for name in files:
        _check_name(name, out)
    manifest = {
        "format": FORMAT,
        **meta,
        "files": {name: {"sha256": sha256_file(path), "size": path.stat().st_size}
                  for name, path in sorted(files.items())},
    }
    body = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    signature = key.sign(body)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST, body)
            _add_bytes(tar, SIGNATURE, signature)
            for name, path in sorted(files.items()):
                info = _info(name, path.stat().st_size)
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{out}: cannot write the bundle ({exc.strerror})") from None
    return manifest


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = size, 0o644, 0, "root", "root"
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _check_name(name: str, bundle: Path) -> None:
    parts = PurePosixPath(name).parts
    allowed = (len(parts) >= 2 and parts[0] in TOP_FOLDERS) or name in TOP_FILES
    if not allowed or ".." in parts or name.startswith("/") or "\\" in name:
        raise UserError(f"{bundle}: unexpected file {name!r} in the bundle (refused)")


@dataclass(frozen=True)
class Verified:
    manifest: dict
    manifest_bytes: bytes
    signature: bytes


def verify(bundle: Path, pubkey: Path, extract_to: Path | None = None) -> Verified:
    """The bundle's manifest, after its signature and every file's hash were checked.

    With ``extract_to``, the files are written there as they are checked; the caller must
    discard that folder when this raises.
    """
    from cryptography.exceptions import InvalidSignature

    public = _load_public(pubkey)
    try:
        tar = tarfile.open(bundle, "r:")
    except FileNotFoundError:
        raise UserError(f"{bundle}: no such bundle") from None
    except (tarfile.TarError, OSError):
        raise UserError(f"{bundle}: not a bundle (not a tar file)") from None
    with tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        for dup in {n for n in names if names.count(n) > 1}:
            raise UserError(f"{bundle}: {dup} appears twice (refused)")
        by_name = {m.name: m for m in members}
        body = _read_member(tar, by_name, MANIFEST, bundle)
        signature = _read_member(tar, by_name, SIGNATURE, bundle)
        try:
            public.verify(signature, body)
        except InvalidSignature:
            raise UserError(f"{bundle}: {MANIFEST} is not signed by {pubkey} (refused; "
                            "a changed manifest or another signing key)") from None
        manifest = json.loads(body)
        if manifest.get("format") != FORMAT:
            raise UserError(f"{bundle}: format {manifest.get('format')!r}, this installer "
                            f"reads {FORMAT}")
        listed: dict = manifest["files"]
        present = set(by_name) - {MANIFEST, SIGNATURE}
        for name in sorted(present - set(listed)):
            raise UserError(f"{bundle}: {name}: extra file, not in the signed manifest (refused)")
        for name in sorted(set(listed) - present):
            raise UserError(f"{bundle}: {name}: missing (the signed manifest lists it)")
        for name in sorted(listed):
            member = by_name[name]
            _check_name(name, bundle)
            if not member.isfile():
                raise UserError(f"{bundle}: {name}: not a regular file (refused)")
            digest = _hash_member(tar, member, extract_to)
            if digest != listed[name]["sha256"]:
                raise UserError(f"{bundle}: {name}: changed (its SHA-256 is not the one in "
                                "the signed manifest)")
    return Verified(manifest, body, signature)


def _read_member(tar: tarfile.TarFile, by_name: dict, name: str, bundle: Path) -> bytes:
    member = by_name.get(name)
    handle = tar.extractfile(member) if member is not None and member.isfile() else None
    if handle is None:
        raise UserError(f"{bundle}: {name}: missing (not a signed bundle)")
    return handle.read()


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo, extract_to: Path | None) -> str:
    source = tar.extractfile(member)
    assert source is not None  # a regular file, checked by the caller
    h = hashlib.sha256()
    sink = None
    if extract_to is not None:
        target = extract_to / member.name
        target.parent.mkdir(parents=True, exist_ok=True)
        sink = open(target, "wb")
    try:
        for block in iter(lambda: source.read(1 << 20), b""):
            h.update(block)
            if sink is not None:
                sink.write(block)
    finally:
        if sink is not None:
            sink.close()
    return h.hexdigest()


def sha256sums(manifest: dict) -> str:
    """The manifest's files as ``sha256sum -c`` input: how a host checks what it received."""
    return "".join(f"{f['sha256']}  {name}\n" for name, f in sorted(manifest["files"].items()))


@dataclass(frozen=True)
class Offline:
    """A verified bundle unpacked on this machine, for one deploy or rollout."""

    root: Path
    host_facts: dict  # what deploys.offline.repository needs (paths on this machine, digest)

    @property
    def digest(self) -> str:
        return self.host_facts["digest"]

    def wheelhouse(self, package: str) -> dict:
        """``wheelhouse.describe`` of the bundle's ``package``, keyed by the bundle."""
        from cmdop_install import wheelhouse

        folder = self.root / "wheels" / package
        if not folder.is_dir():
            raise UserError(f"{self.host_facts['path']}: has no wheels/{package} (rebuild it "
                            "with `cmdop-install bundle build`)")
        return {**wheelhouse.describe(folder, package), "key": f"{package}-{self.digest[:16]}"}

    def agent_release(self, version: str | None):
        from cmdop_install import agent_releases

        release = agent_releases.release_of(self.wheelhouse("cmdop-agent"))
        if version not in (None, release.version):
            raise UserError(f"--version {version}: the bundle carries agent {release.version} "
                            "only (build a bundle with that release)")
        return release


@contextlib.contextmanager
def opened(config, override: Path | None) -> Iterator[Offline | None]:
    """The site's bundle (``override``, else ``[bundle] file``) verified and unpacked, or None
    when the site deploys online. Nothing reaches a host before this returns."""
    file = override or (Path(config["bundle"]["file"]) if config["bundle"]["file"] else None)
    if file is None:
        yield None
        return
    if not config["bundle"]["pubkey"]:
        raise UserError("site.toml: [bundle] pubkey: required to deploy from a bundle (set it "
                        "to the .pub file `cmdop-install bundle keygen` wrote)")
    with tempfile.TemporaryDirectory(prefix="cmdop-bundle-") as tmp:
        work = Path(tmp)
        checked = verify(file, Path(config["bundle"]["pubkey"]), extract_to=work / "files")
        (work / MANIFEST).write_bytes(checked.manifest_bytes)
        (work / "SHA256SUMS").write_text(sha256sums(checked.manifest))
        yield Offline(work / "files", {
            "digest": hashlib.sha256(checked.manifest_bytes).hexdigest(),
            "path": str(file.resolve()),
            "manifest": str(work / MANIFEST),
            "sums": str(work / "SHA256SUMS"),
            "count": len(checked.manifest["files"]),
        })
