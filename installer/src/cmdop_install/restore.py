"""`cmdop-install restore SITE ARCHIVE`: a `backup` archive back onto a deployed site.

Everything is checked on this machine before any host is touched: the archive must open
with this site's key (``SecretStore.open_sealed``: not damaged, not another key's), its
manifest must name this site and its CA, and every member must match its SHA-256, with
nothing extra. Then, in one pyinfra run (``deploys/restore.py``): the control plane and its
timers stop, Redis restarts empty, the database host replaces each database from its dump
in one transaction (``cmdop-restore``, as the admin logins over the site's TLS), the audit
log's grants are applied again, the control plane starts and ``audit_verify`` walks the
hash chains.

Redis is not restored but emptied (docs/operations.md#backup-and-restore says why nothing a
user needs is lost). The site folder in the archive is not written over this one: it is there to
rebuild a lost site folder by hand (`tar` after opening); restore needs the site the
archive came from, deployed.
"""

from __future__ import annotations

import hashlib
import json
import secrets as _random
import tarfile
from pathlib import Path

from cmdop_install import backup, manage
from cmdop_install.errors import UserError
from cmdop_install.render import postgres_names
from cmdop_install.runner import RunResult, run_deploy
from cmdop_install.sitedir import SiteDir

RESTORE_DEPLOY = "cmdop_install.deploys.restore:restore"


def extract_plain_members(tar: tarfile.TarFile, into: Path) -> None:
    """Only plain files and folders under ``into``: what tarfile's "data" filter allows, done
    by hand because Debian 12's Python 3.11.2 predates the filter argument (3.11.4)."""
    for member in tar.getmembers():
        target = (into / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(into.resolve()):
            raise tarfile.TarError(f"member {member.name!r} is not a plain file under the archive")
        member.mode = 0o700 if member.isdir() else 0o600
    tar.extractall(into)  # noqa: S202 - every member was checked above


def opened(site: SiteDir, archive: Path, into: Path) -> dict:
    """The archive's members extracted into ``into`` and its manifest, or one line saying
    why not (nothing else happens)."""
    if not archive.is_file():
        raise UserError(f"{archive}: no such file")
    plain = into / "archive.tar"
    site.store.open_sealed(archive, plain)
    try:
        with tarfile.open(plain) as tar:
            names = tar.getnames()
            extract_plain_members(tar, into / "members")
        manifest = json.loads((into / "members" / "manifest.json").read_text())
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise UserError(f"{archive}: opens, but is not a backup archive inside ({exc})") from None
    finally:
        plain.unlink()
    if manifest.get("format") != backup.FORMAT:
        raise UserError(f"{archive}: archive format {manifest.get('format')!r}; this installer "
                        f"reads format {backup.FORMAT}")
    ca = site.path / "pki" / "ca.crt"
    ca_sum = hashlib.sha256(ca.read_bytes()).hexdigest() if ca.is_file() else ""
    if manifest.get("site") != site.name or manifest.get("site_ca_sha256") != ca_sum:
        raise UserError(f"{archive}: belongs to site {manifest.get('site')!r} with another CA, "
                        f"not to {site.name} (restore it onto the site it came from)")
    files = manifest.get("files", {})
    extra = sorted(set(names) - set(files) - {"manifest.json"})
    if extra or set(files) - set(names):
        raise UserError(f"{archive}: its members differ from its manifest "
                        f"({', '.join(extra or sorted(set(files) - set(names)))})")
    for name, digest in files.items():
        if backup.sha256(into / "members" / name) != digest:
            raise UserError(f"{archive}: {name} does not match its checksum")
    if not all(f"db/{dump}" in files for dump in backup.DUMPS):
        raise UserError(f"{archive}: holds no database dumps")
    return manifest


def restore_site(site: SiteDir, into: Path) -> RunResult:
    """Replace both databases from an archive ``opened`` into ``into``; the run's result
    (audit_verify's answer in the first control-plane host's ``audit_verify`` fact)."""
    inventory = site.inventory
    if not inventory.groups["postgres"] or not inventory.groups["control_plane"]:
        raise UserError("inventory.py: restore needs a postgres and a control_plane host")
    dumps = into / "members" / "db"
    (dumps / "SHA256SUMS").write_text("".join(
        f"{backup.sha256(dumps / name)}  {name}\n" for name in backup.DUMPS))
    db_host = inventory.groups["postgres"][0].name
    control = inventory.groups["control_plane"][0].name
    grants = manage.manage_command(
        f"audit_grants {postgres_names(site.config)['app']} --retention-days "
        f"{site.config['audit']['retention_days']}", audit_admin=True)
    result = run_deploy(
        inventory.pyinfra_groups(), RESTORE_DEPLOY,
        limit=sorted({db_host, *(h.name for group in ("control_plane", "redis")
                                  for h in inventory.groups[group])}),
        data={"cmdop_restore_dumps": str(dumps), "cmdop_restore_run": _random.token_hex(8),
              "cmdop_restore_db_host": db_host, "cmdop_restore_grants": grants},
        facts={"audit_verify": manage.manage_command("audit_verify") + " 2>&1 || true"},
    )
    failed = [f"{name}: {h.error or ', '.join(op.name for op in h.ops if not op.success)}"
              for name, h in result.hosts.items() if h.error or any(not op.success
                                                                     for op in h.ops)]
    if failed:
        raise UserError("restore failed on " + "; ".join(failed) + " (a database whose "
                        "restore failed is as it was; rerun once the cause is fixed)")
    verify = result.hosts[control].facts.get("audit_verify", "")
    if "audit chain intact" not in verify:
        raise UserError(f"{control}: the databases are back, but audit_verify does not pass: "
                        f"{verify.strip().splitlines()[-1] if verify.strip() else 'no answer'}")
    return result
