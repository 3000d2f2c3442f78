"""The README's "Your first site" works as written: its `init`, its site.toml and inventory.py
edits and its `check`/`render` commands, taken from the README itself, for three hosts."""

import re
import shlex
from pathlib import Path

import pytest
from cmdop_install.cli import main

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def _blocks(section: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def _commands(block: str) -> list[list[str]]:
    """Each line's cmdop-install arguments, comments dropped."""
    argv = [shlex.split(line, comments=True) for line in block.splitlines()]
    assert all(a[0] == "cmdop-install" for a in argv if a), block
    return [a[1:] for a in argv if a]


def _set_keys(site_toml: Path, block: str) -> None:
    """Edit site.toml as a person would: each `key = value` of the block replaces that line."""
    text = site_toml.read_text()
    for line in block.strip().splitlines():
        key = line.split("=", 1)[0].strip()
        text, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", lambda _m, ln=line: ln, text)
        assert count == 1, f"site.toml has {count} lines for {key}"
    site_toml.write_text(text)


def _replace_groups(inventory: Path, block: str) -> None:
    """Keep the skeleton's explanatory docstring, replace everything after it."""
    text = inventory.read_text()
    head = text[: text.index('"""', 3) + 3]
    inventory.write_text(head + "\n\n" + block)


def test_the_first_site_flow_of_the_readme(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CMDOP_INSTALL_KEY", raising=False)
    blocks = _blocks(_section("Your first site"))
    assert [lang for lang, _ in blocks] == ["sh", "toml", "python", "sh"]
    (init,) = _commands(blocks[0][1])
    assert init[0] == "init"
    assert main(init) == 0, capsys.readouterr().err
    site = tmp_path / init[1]

    _set_keys(site / "site.toml", blocks[1][1])
    _replace_groups(site / "inventory.py", blocks[2][1])

    offline = [c for c in _commands(blocks[3][1]) if c[0] in ("check", "render")]
    assert [c[0] for c in offline] == ["check", "render"]
    for argv in offline:
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"cmdop-install {' '.join(argv)}: exit {code}\n{out}{err}"

    out_dir = tmp_path / offline[1][offline[1].index("--out") + 1]
    hosts = {p.name for p in out_dir.iterdir() if p.is_dir()}
    assert hosts == {"db1", "app1", "web1"}
    assert (out_dir / "db1/etc/redis/redis.conf").exists()
    assert (out_dir / "app1/etc/nginx/conf.d/cmdop.conf").exists()
    agent_toml = next((out_dir / "web1").rglob("agent.toml"))
    assert 'server = "https://cmdop.example.net"' in agent_toml.read_text()
