"""The wheel carries templates/ (the one template source) and renders from it installed."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cmdop_install.wheelhouse import uv_command

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    uv = uv_command(ROOT)
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel from the sdist: the path a release build takes
    subprocess.run([uv, "build", "--package", "cmdop-install", "-q", "-o", str(out)],
                   cwd=ROOT, check=True, capture_output=True)
    (built,) = out.glob("*.whl")
    return built


def test_wheel_ships_every_template(wheel):
    repo = {str(p.relative_to(ROOT / "templates")) for p in (ROOT / "templates").rglob("*.j2")}
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n.removeprefix("cmdop_install/templates/") for n in zf.namelist()
                   if n.startswith("cmdop_install/templates/")}
    assert shipped == repo


def test_installed_wheel_renders_from_its_own_templates(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site-packages")
    code = ("from cmdop_install.render import templates_dir, environment;"
            "print(templates_dir());"
            "environment().get_template('postgres/pg_hba.conf.j2')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path / "site-packages")}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "site-packages/cmdop_install/templates")
