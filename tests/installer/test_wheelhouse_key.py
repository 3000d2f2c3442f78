"""The wheelhouse key (which release a host runs) follows the sources, not what a build or
`npm ci` leaves in the tree: otherwise a fresh checkout's second deploy installs the same
code again as a new release."""

from pathlib import Path

import pytest
from cmdop_install.wheelhouse import _source_hash

pytestmark = pytest.mark.unit


def tree(root: Path) -> Path:
    (root / "uv.lock").write_text("lock\n")
    src = root / "server/src/cmdop_server"
    src.mkdir(parents=True)
    (src / "views.py").write_text("x = 1\n")
    (root / "server/package-lock.json").write_text("{}\n")
    return root


def test_what_builds_and_npm_ci_leave_does_not_change_the_key(tmp_path: Path) -> None:
    root = tree(tmp_path)
    before = _source_hash(root, "cmdop-server")
    vendor = root / "server/src/cmdop_server/web/assets/vendor"
    vendor.mkdir(parents=True)
    (vendor / "xterm.js").write_text("copied by the build hook\n")
    modules = root / "server/node_modules/@xterm/xterm/lib"
    modules.mkdir(parents=True)
    (modules / "xterm.js").write_text("from npm ci\n")
    cache = root / "server/src/cmdop_server/__pycache__"
    cache.mkdir()
    (cache / "views.cpython-311.pyc").write_bytes(b"\x00")
    assert _source_hash(root, "cmdop-server") == before


@pytest.mark.parametrize("changed", ["server/src/cmdop_server/views.py",
                                     "server/package-lock.json", "uv.lock"])
def test_a_changed_source_changes_the_key(tmp_path: Path, changed: str) -> None:
    root = tree(tmp_path)
    before = _source_hash(root, "cmdop-server")
    (root / changed).write_text("changed\n")
    assert _source_hash(root, "cmdop-server") != before
