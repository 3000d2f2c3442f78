"""The wheelhouse key (which release a host runs) follows the sources, not what a build or
`npm ci` leaves in the tree: otherwise a fresh checkout's second deploy installs the same
code again as a new release."""

import sys
from pathlib import Path

import pytest
from cmdop_install.errors import UserError
from cmdop_install.wheelhouse import _run, _source_hash

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


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_uv_trusts_the_machines_certificate_store_unless_told_otherwise(tmp_path: Path,
                                                                       monkeypatch) -> None:
    seen = tmp_path / "seen"
    write = _child(f"import os; open({str(seen)!r}, 'w').write(os.environ['UV_NATIVE_TLS'])")
    monkeypatch.delenv("UV_NATIVE_TLS", raising=False)
    _run(write, tmp_path, "cmdop-server")
    assert seen.read_text() == "1"
    monkeypatch.setenv("UV_NATIVE_TLS", "0")  # the operator's own choice wins
    _run(write, tmp_path, "cmdop-server")
    assert seen.read_text() == "0"


def test_a_failed_build_names_uvs_error_not_its_hint(tmp_path: Path) -> None:
    failing = _child("import sys; sys.stderr.write('  x Failed to build\\nerror: request failed"
                     " (invalid peer certificate)\\nhint: Consider enabling system "
                     "certificates\\n'); sys.exit(2)")
    with pytest.raises(UserError) as refused:
        _run(failing, tmp_path, "cmdop-server")
    assert refused.value.message == ("building wheels for cmdop-server: error: request failed "
                                     "(invalid peer certificate)")
