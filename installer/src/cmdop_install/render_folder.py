"""`cmdop-install render`: every host's files and a manifest, written to a folder in one move.

The site is checked first, exactly as ``deploy`` checks it, and certificates the inventory
now needs are issued (as ``init`` does). The files (decrypted private keys among them) are
written to a 0700 folder next to the output and renamed into place only once everything
rendered: a failure leaves nothing behind, and an earlier render is replaced whole.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from cmdop_install.check import refuse_on_problems
from cmdop_install.errors import UserError
from cmdop_install.fsutil import make_dir, write_atomic
from cmdop_install.sitedir import SiteDir

MANIFEST = "manifest.json"


def render_site(site: SiteDir, out: Path, host: str | None = None) -> dict:
    """Write out/<host>/<path> for each host (or just ``host``) and out/manifest.json."""
    out = Path(out)
    _refuse_foreign_folder(out)
    refuse_on_problems(site, "rendered")
    hosts = [site.inventory.host(host).name] if host else [h.name for h in site.inventory.hosts()]
    manifest: dict = {"site": site.name, "hosts": {}}
    make_dir(out.parent, 0o755)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for name in hosts:
            files = site.files(name)
            for rendered in files:
                dest = staging / name / rendered.path.lstrip("/")
                make_dir(dest.parent, 0o700)
                write_atomic(dest, rendered.content, rendered.mode)
            manifest["hosts"][name] = [f.manifest_entry() for f in files]
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        write_atomic(staging / MANIFEST, text.encode(), 0o644)
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _refuse_foreign_folder(out: Path) -> None:
    """``out`` is replaced whole: only a new or empty folder, or an earlier render, may be."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file (give a folder)")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"--out {out}: not empty and not an earlier render (no {MANIFEST}); "
                        "give a new or empty folder")


def _replace(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        out.rename(old / "render")
    try:
        staging.rename(out)
    except OSError as exc:
        if old is not None:
            (old / "render").rename(out)
        raise UserError(f"--out {out}: cannot move the rendered files into place "
                        f"({exc.strerror})") from None
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
