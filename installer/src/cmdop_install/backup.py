"""`cmdop-install backup SITE [--out DIR]`: one archive from which the site can be rebuilt.

The database host dumps the app and audit databases itself (``cmdop-backup``, rendered from
templates/postgres/cmdop-backup.sh.j2: ``pg_dump`` as each database's admin login over the
site's TLS, its password in a 0600 passfile); this machine fetches the dumps, adds the site
folder (everything but the secrets key) and a manifest of SHA-256 checksums, and seals the
tar into ``<site>-<UTC time>.cmdop-backup`` with the site's key (``SecretStore.seal_file``,
the one place that does backup crypto). Redis is left out: it holds only transient state
(docs/operations.md#backup-and-restore says what and why nothing a user needs is lost).

Archive members: ``manifest.json``, ``db/app.dump``, ``db/audit.dump``, ``site/<path>``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets as _random
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from cmdop_install import __version__
from cmdop_install.errors import UserError
from cmdop_install.runner import run_deploy
from cmdop_install.sitedir import SiteDir

BACKUP_DEPLOY = "cmdop_install.deploys.backup:dump"
SUFFIX = ".cmdop-backup"
FORMAT = 1
DUMPS = ("app.dump", "audit.dump")
# in the site folder but not backed up: the held lock and the key (when it lives there)
_SKIPPED = (".rollout.lock",)


def backup_site(site: SiteDir, out: Path) -> Path:
    """Dump, fetch, archive and seal; the path of the archive (0600) in ``out``."""
    hosts = site.inventory.groups["postgres"]
    if not hosts:
        raise UserError("inventory.py: no postgres host, so there is no database to back up")
    db_host = hosts[0].name
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out}: no such folder (create it, or choose another with --out)")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    archive = out / f"{site.name}-{stamp}{SUFFIX}"
    if archive.exists():
        raise UserError(f"{archive}: already exists (one backup per second; rerun)")
    with tempfile.TemporaryDirectory(prefix="cmdop-backup-") as tmp:  # 0700
        fetched = Path(tmp) / "db"
        fetched.mkdir(mode=0o700)
        result = run_deploy(
            site.inventory.pyinfra_groups(), BACKUP_DEPLOY, limit=[db_host],
            data={"cmdop_backup_fetch": str(fetched),
                  "cmdop_backup_run": _random.token_hex(8)},
        )
        failed = result.hosts[db_host].error or "; ".join(
            op.name for op in result.hosts[db_host].ops if not op.success)
        if failed or not all((fetched / name).is_file() for name in DUMPS):
            why = failed or "no dump came back"
            raise UserError(f"{db_host}: the database dump failed ({why}); nothing was "
                            f"written to {out}")
        _check_sums(fetched, db_host)
        plain = Path(tmp) / "archive.tar"
        _write_tar(plain, site, fetched, stamp, skip={archive.resolve(), out.resolve()})
        site.store.seal_file(plain, archive)
    return archive


def _check_sums(fetched: Path, db_host: str) -> None:
    """The dumps as the database host wrote them (its SHA256SUMS), or one line."""
    wanted = {}
    for line in (fetched / "SHA256SUMS").read_text().splitlines():
        digest, _, name = line.partition("  ")
        wanted[name] = digest
    for name in DUMPS:
        if wanted.get(name) != sha256(fetched / name):
            raise UserError(f"{db_host}: {name} arrived different from what the host wrote "
                            "(its SHA-256 does not match); rerun the backup")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def site_files(site: SiteDir, skip: set[Path]) -> list[Path]:
    """The site folder's regular files, relative, without the secrets key, ``skip`` or
    earlier archives (``--out`` may be the site folder itself)."""
    key_file = site.config["site"]["key_file"]
    skipped = {*skip, *([Path(key_file).resolve()] if key_file else [])}
    found = []
    for root, dirs, names in os.walk(site.path):
        dirs[:] = sorted(d for d in dirs if (Path(root) / d).resolve() not in skipped)
        for name in sorted(names):
            path = Path(root) / name
            if (name in _SKIPPED and Path(root) == site.path) or name.endswith(SUFFIX) \
                    or path.is_symlink() or not path.is_file() or path.resolve() in skipped:
                continue
            found.append(path.relative_to(site.path))
    return found


def _write_tar(plain: Path, site: SiteDir, fetched: Path, stamp: str, skip: set[Path]) -> None:
    members = [(f"db/{name}", fetched / name) for name in DUMPS]
    members += [(f"site/{rel}", site.path / rel) for rel in site_files(site, skip)]
    ca = site.path / "pki" / "ca.crt"
    manifest = {
        "format": FORMAT,
        "site": site.name,
        "site_ca_sha256": sha256(ca) if ca.is_file() else "",
        "created": stamp,
        "installer": __version__,
        "files": {name: sha256(path) for name, path in members},
    }
    fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mode = len(data), 0o600
        tar.addfile(info, io.BytesIO(data))
        for name, path in members:
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as member:
                tar.addfile(info, member)
