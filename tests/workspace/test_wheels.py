"""Each package builds a wheel on its own; the agent's wheel depends on nothing (no Django)."""

import subprocess
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from cmdop_install.wheelhouse import uv_command

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _uv() -> str:
    return uv_command(ROOT)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    built = {}
    for package in ("cmdop-install", "cmdop-server", "cmdop-agent"):
        subprocess.run(
            [_uv(), "build", "--package", package, "--wheel", "-q", "-o", str(out / package)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        (wheel,) = (out / package).glob("*.whl")
        built[package] = wheel
    return built


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())


def test_each_package_builds_its_own_wheel(wheels: dict[str, Path]) -> None:
    imports = {
        "cmdop-install": "cmdop_install/",
        "cmdop-server": "cmdop_server/",
        "cmdop-agent": "cmdop_agent/",
    }
    for package, wheel in wheels.items():
        names = zipfile.ZipFile(wheel).namelist()
        assert any(n.startswith(imports[package]) for n in names), package
        others = set(imports.values()) - {imports[package]}
        assert not any(n.startswith(tuple(others)) for n in names), (
            f"{package} ships another package"
        )


def test_agent_wheel_pulls_nothing(wheels: dict[str, Path]) -> None:
    meta = _metadata(wheels["cmdop-agent"])
    assert meta.get_all("Requires-Dist") is None
    entry_points = (
        zipfile.ZipFile(wheels["cmdop-agent"])
        .read(
            next(
                n
                for n in zipfile.ZipFile(wheels["cmdop-agent"]).namelist()
                if n.endswith("entry_points.txt")
            )
        )
        .decode()
    )
    assert "cmdop-agent = cmdop_agent.cli:main" in entry_points
    # the person's client ships in the same dependency-free wheel
    assert "cmdop = cmdop_agent.client.cli:main" in entry_points


def test_installer_and_server_declare_their_stacks(wheels: dict[str, Path]) -> None:
    installer = _metadata(wheels["cmdop-install"]).get_all("Requires-Dist")
    server = _metadata(wheels["cmdop-server"]).get_all("Requires-Dist")
    assert any(r.startswith("pyinfra") for r in installer)
    assert not any(r.lower().startswith("django") for r in installer)
    (django,) = [r for r in server if r.lower().startswith("django") and "ninja" not in r]
    assert "<5.3" in django and ">=5.2" in django, "5.2 LTS: the machines run Python 3.11"


def test_server_wheel_carries_the_terminal_assets(wheels: dict[str, Path]) -> None:
    """An air-gapped site serves xterm.js from the wheel: npm ci's files are built in."""
    names = zipfile.ZipFile(wheels["cmdop-server"]).namelist()
    for name in ("xterm.js", "xterm.css", "addon-fit.js", "addon-canvas.js", "xterm.LICENSE"):
        assert f"cmdop_server/web/assets/vendor/{name}" in names, name
    lock = (ROOT / "server" / "package-lock.json").read_text()
    assert lock.count('"integrity": "sha512-') == 3
