"""The agent's release recipe (``deploys.ops.venv_commands`` without pip, as ``agent_release``
yields it) run for real on this Debian 12 machine: a virtualenv made without pip, Debian's
pip wheel (python3-pip-whl, which python3-venv pulls in) installing the release. The shipped
agent (empty requirements.txt) and an added release wheel (requirements.txt naming it) each
give a runnable ``cmdop-agent`` of their version, and the release holds no pip or setuptools."""

import shutil
import subprocess
from pathlib import Path

import pytest
from cmdop_install import agent_releases
from cmdop_install.deploys.ops import venv_commands
from pyinfra.api import FileUploadCommand
from pyinfra.context import ctx_host

from tests.support.agent_release import build_agent_wheel

pytestmark = pytest.mark.integration


class LocalHost:
    def get_temp_filename(self, dest: str, temp_directory: str) -> str:
        return f"{temp_directory}/upload-of-{Path(dest).name}"


def build_release(venv: Path, wheelhouse: dict) -> None:
    with ctx_host.use(LocalHost()):
        commands = list(venv_commands(str(venv), wheelhouse, "unused", with_pip=False))
    for command in commands:
        if isinstance(command, FileUploadCommand):
            assert isinstance(command.src, str)  # a path on the operator's machine
            shutil.copyfile(command.src, command.dest)
        else:
            subprocess.run(["sh", "-ec", str(command)], check=True)


def test_shipped_and_added_agent_releases_install_without_pip(tmp_path: Path) -> None:
    site_dir = tmp_path / "site"
    (site_dir / agent_releases.RELEASES_DIR).mkdir(parents=True)
    build_agent_wheel("9.8.7", site_dir / agent_releases.RELEASES_DIR)
    shipped = agent_releases.find(site_dir, None)
    for release in (shipped, agent_releases.find(site_dir, "9.8.7")):
        venv = tmp_path / "releases" / release.version / "venv"
        build_release(venv, release.wheelhouse)
        version = subprocess.run([venv / "bin/cmdop-agent", "--version"], capture_output=True,
                                 text=True, check=True).stdout
        assert version.split() == ["cmdop-agent", release.version]
        assert (venv / ".cmdop-wheelhouse").read_text() == release.wheelhouse["key"] + "\n"
        packages = {p.name.split("-")[0] for p in next((venv / "lib").glob("python3*")).glob(
            "site-packages/*.dist-info")}
        assert packages == {"cmdop_agent"}
