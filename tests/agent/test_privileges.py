"""Process isolation: no new privileges for anything the agent starts; root needs opt-in."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cmdop_agent.errors import AgentError
from cmdop_agent.privileges import refuse_root

pytestmark = pytest.mark.unit


def test_children_inherit_no_new_privs() -> None:
    code = ("from cmdop_agent.privileges import set_no_new_privs; import subprocess; "
            "set_no_new_privs(); "
            "print(subprocess.run(['sh', '-c', 'grep NoNewPrivs /proc/self/status'], "
            "capture_output=True, text=True).stdout)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["NoNewPrivs:", "1"]


def test_without_it_children_have_no_flag() -> None:
    out = subprocess.run(["grep", "NoNewPrivs", "/proc/self/status"], capture_output=True,
                         text=True).stdout
    assert out.split() == ["NoNewPrivs:", "0"]  # so the test above proves something


@pytest.fixture
def setuid_id(tmp_path_factory):
    """A setuid-root copy of id(1) in a directory `nobody` can reach."""
    d = Path(tempfile.mkdtemp(prefix="cmdop-suid-", dir="/var/tmp"))
    d.chmod(0o755)
    binary = d / "id"
    shutil.copy("/usr/bin/id", binary)
    binary.chmod(0o4755)
    yield binary
    shutil.rmtree(d)


def _euid_as_nobody(binary: Path, no_new_privs: bool) -> str:
    code = ("import os, sys; from cmdop_agent.privileges import set_no_new_privs\n"
            "if sys.argv[2] == '1': set_no_new_privs()\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "os.execv(sys.argv[1], [sys.argv[1], '-u'])")
    return subprocess.run([sys.executable, "-c", code, str(binary), "1" if no_new_privs else "0"],
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def test_setuid_binary_cannot_raise_privileges(setuid_id: Path) -> None:
    assert _euid_as_nobody(setuid_id, no_new_privs=False) == "0"  # the control: setuid works
    assert _euid_as_nobody(setuid_id, no_new_privs=True) == "65534"


def test_refuse_root() -> None:
    with pytest.raises(AgentError, match="refusing to run as root"):
        refuse_root(allow_root=False)
    refuse_root(allow_root=True)
