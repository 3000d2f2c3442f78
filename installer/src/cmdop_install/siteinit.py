"""``cmdop-install init``: create or complete a site folder without touching what exists.

Creates site.toml (commented defaults), inventory.py (skeleton), the secrets key (outside
the folder), secrets.enc (only missing secrets) and pki/ (only missing or stale
certificates). Run again, it changes nothing: existing files are read, never rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from cmdop_install import pki
from cmdop_install.errors import UserError
from cmdop_install.fsutil import make_dir, write_atomic
from cmdop_install.inventory import INVENTORY_FILE, SKELETON, load_inventory
from cmdop_install.secrets import SecretStore, default_key_path
from cmdop_install.site import SITE_FILE, default_site, load_site, render_site_toml


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    generated_secrets: list[str] = field(default_factory=list)
    issued_certs: list[str] = field(default_factory=list)
    key_source: str = ""


def init_site(site_dir: Path, key_file: Path | None = None) -> InitReport:
    site_dir = Path(site_dir)
    report = InitReport()
    make_dir(site_dir, 0o700)
    site_toml = site_dir / SITE_FILE
    if not site_toml.exists():
        values = default_site(_site_name(site_dir))
        values["site"]["key_file"] = str(
            (key_file or default_key_path(values["site"]["name"])).expanduser().absolute())
        write_atomic(site_toml, render_site_toml(values).encode(), 0o644)
        report.created.append(SITE_FILE)
    elif key_file is not None:
        raise UserError(f"{site_toml} exists: edit [site] key_file there instead of --key-file")
    site = load_site(site_dir)
    if not (site_dir / INVENTORY_FILE).exists():
        write_atomic(site_dir / INVENTORY_FILE, SKELETON.encode(), 0o644)
        report.created.append(INVENTORY_FILE)
    inventory = load_inventory(site_dir)

    store = SecretStore.open(site_dir, site["site"]["key_file"], create_key=True)
    report.key_source = store.key_source
    report.generated_secrets = store.ensure_all()
    store.save()
    report.issued_certs = pki.ensure_pki(site_dir, site, inventory, store.pki_passphrase())
    return report


def _site_name(site_dir: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]", "-", site_dir.absolute().name.lower()).strip("-_")
    return (name if name and name[0].isalpha() else f"site-{name}")[:30] or "cmdop"
