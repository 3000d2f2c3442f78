"""Puts the browser terminal's assets (xterm.js and its addons, from ``npm ci`` against
package-lock.json) into the wheel, so a site serves them with no network. They are not
committed: ``scripts/bootstrap.sh`` runs ``npm ci`` here, and every build (the wheel and
the workspace's editable install) copies the files named below into
``src/cmdop_server/web/assets/vendor/`` (git-ignored), from which the wheel takes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# node_modules path -> name served under /assets/vendor/ (web/views.py lists the same names)
VENDORED = {
    "@xterm/xterm/lib/xterm.js": "xterm.js",
    "@xterm/xterm/css/xterm.css": "xterm.css",
    "@xterm/addon-fit/lib/addon-fit.js": "addon-fit.js",
    "@xterm/addon-canvas/lib/addon-canvas.js": "addon-canvas.js",
    "@xterm/xterm/LICENSE": "xterm.LICENSE",
}
VENDOR_DIR = "src/cmdop_server/web/assets/vendor"


class VendorAssetsHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        modules = root / "node_modules"
        missing = [name for name in VENDORED if not (modules / name).is_file()]
        if missing:
            raise SystemExit(
                f"cmdop-server: {modules / missing[0]} is missing: run scripts/bootstrap.sh "
                "(it runs `npm ci` in server/) before building the wheel"
            )
        target = root / VENDOR_DIR
        target.mkdir(parents=True, exist_ok=True)
        for source, name in VENDORED.items():
            shutil.copyfile(modules / source, target / name)
        build_data.setdefault("artifacts", []).append(f"/{VENDOR_DIR}/*")
