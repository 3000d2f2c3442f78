"""The agent's release recipe (``deploys.ops.venv_commands`` without pip, as ``agent_release``
yields it) run for real on this Debian 12 machine: a virtualenv made without pip, Debian's
pip wheel (python3-pip-whl, which python3-venv pulls in) installing the release. The shipped
agent (empty requirements.txt) and an added release wheel (requirements.txt naming it) each
give a runnable ``cmdop-agent`` of their version, and the release holds no pip or setuptools."""

import http.server
import shutil
import subprocess
import threading
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


def build_release(venv: Path, wheelhouse: dict, with_pip: bool = False) -> None:
    with ctx_host.use(LocalHost()):
        commands = list(venv_commands(str(venv), wheelhouse, "unused", with_pip=with_pip))
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


class Recorder(http.server.BaseHTTPRequestHandler):
    """Every request pip sends, answered 404."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.path)
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("source", ["environment", "configuration"])
def test_pip_reads_the_wheelhouse_alone_whatever_its_settings_say(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Links and an index named by PIP_* variables, or by pip's configuration files (the
    user's and the venv's, as /etc/pip.conf would), never send a release's install to the
    network: from a bundle that would be an outbound attempt, online a package from
    elsewhere than the wheelhouse. Both recipes: the agent's (Debian's pip wheel) and the
    control plane's (the venv's own pip)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    Recorder.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    if source == "environment":
        monkeypatch.setenv("PIP_FIND_LINKS", f"{url}/env-links/")
        monkeypatch.setenv("PIP_INDEX_URL", f"{url}/env-index/")
    else:
        user = tmp_path / "xdg" / "pip" / "pip.conf"
        user.parent.mkdir(parents=True)
        user.write_text(f"[global]\nindex-url = {url}/user-index/\n")
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
        monkeypatch.delenv("PIP_FIND_LINKS", raising=False)  # it would win over the files
    site_dir = tmp_path / "site"
    (site_dir / agent_releases.RELEASES_DIR).mkdir(parents=True)
    build_agent_wheel("9.8.7", site_dir / agent_releases.RELEASES_DIR)
    release = agent_releases.find(site_dir, "9.8.7")
    try:
        for with_pip in (False, True):
            venv = tmp_path / f"with-pip-{with_pip}" / "venv"
            venv.mkdir(parents=True)
            if source == "configuration":
                (venv / "pip.conf").write_text(f"[global]\nfind-links = {url}/venv-links/\n")
            build_release(venv, release.wheelhouse, with_pip)
            version = subprocess.run([venv / "bin/cmdop-agent", "--version"],
                                     capture_output=True, text=True, check=True).stdout
            assert version.split() == ["cmdop-agent", "9.8.7"]
    finally:
        server.shutdown()
        server.server_close()
    assert Recorder.seen == []
