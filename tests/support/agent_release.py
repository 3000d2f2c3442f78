"""An agent release with another version number, built from this checkout's agent source
the way a release wheel is built (for rollout tests and the deploy benchmark)."""

import re
import shutil
import subprocess
from pathlib import Path

from cmdop_install.wheelhouse import repo_root, uv_command


def build_agent_wheel(version: str, out: Path) -> Path:
    root = repo_root()
    src = out / "agent-src"
    shutil.copytree(root / "agent", src, ignore=shutil.ignore_patterns("__pycache__", "dist"))
    for path, name in (
        (src / "pyproject.toml", "version"),
        (src / "src/cmdop_agent/__init__.py", "__version__"),
    ):
        text = path.read_text()
        new = re.sub(rf'^{name} = "[^"]+"', f'{name} = "{version}"', text, count=1, flags=re.M)
        assert new != text, f"no {name} line in {path}"
        path.write_text(new)
    uv = uv_command(root)
    subprocess.run([uv, "build", "--wheel", "-q", "-o", str(out), str(src)], check=True)
    (wheel,) = out.glob(f"cmdop_agent-{version}-*.whl")
    return wheel
