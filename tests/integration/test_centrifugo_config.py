"""Our Centrifugo config passes `centrifugo checkconfig --strict` (when a binary exists).

No registry this project can reach ships Centrifugo; the operator supplies the binary.
Point CMDOP_CENTRIFUGO_BIN at one (or put `centrifugo` on PATH) to run this check.
"""

import os
import shutil
import subprocess

import pytest
from cmdop_install.render import load_for_render, render_host

from tests.support.sites import key_env, make_site

pytestmark = pytest.mark.integration


def test_rendered_config_passes_strict_checkconfig(tmp_path):
    binary = os.environ.get("CMDOP_CENTRIFUGO_BIN") or shutil.which("centrifugo")
    if not binary:
        pytest.skip("no centrifugo binary (set CMDOP_CENTRIFUGO_BIN): not in any registry "
                    "this project can reach")
    with key_env():
        site_dir = make_site(tmp_path / "site", {"centrifugo.binary": binary}, centrifugo=True)
        site, inventory, secrets, pem = load_for_render(site_dir)
    root = tmp_path / "root"
    for f in render_host(site, inventory, "node1", secrets, pem, root=str(root)):
        dest = root / f.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.content)
    done = subprocess.run(
        [binary, "checkconfig", "--strict", "--config", str(root / "etc/centrifugo/config.json")],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [n for n, v in secrets.items() if v in done.stdout + done.stderr]
