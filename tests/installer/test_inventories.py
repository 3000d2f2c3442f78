"""inventories/: every example site, copied as an operator copies it, passes `init` and
`check`, and exports for Ansible with the same groups."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from cmdop_install.cli import main
from cmdop_install.inventory import GROUPS, load_inventory

from tests.support.sites import key_env

pytestmark = pytest.mark.unit

INVENTORIES = Path(__file__).resolve().parents[2] / "inventories"
EXAMPLES = sorted(p.name for p in INVENTORIES.iterdir() if p.is_dir())


def test_there_are_the_examples_the_readme_lists():
    assert EXAMPLES == ["fleet", "single-node"]
    readme = (INVENTORIES / "README.md").read_text()
    for name in EXAMPLES:
        assert f"`{name}/`" in readme
        assert (INVENTORIES / name / "README.md").is_file()
        assert sorted(p.name for p in (INVENTORIES / name).iterdir()) == [
            "README.md", "inventory.py", "site.toml"]  # no secret, no key, no pki


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_example_passes_init_check_and_exports(name, tmp_path, capsys):
    site_dir = tmp_path / name
    shutil.copytree(INVENTORIES / name, site_dir)
    with key_env():
        assert main(["init", str(site_dir)]) == 0
        assert main(["check", str(site_dir)]) == 0
        assert "check: ok" in capsys.readouterr().out
        out = tmp_path / "ansible"
        assert main(["export-ansible", str(site_dir), str(out), "--vault-password-file",
                     str(tmp_path / "vault-pass")]) == 0
    inventory = load_inventory(site_dir)
    children = yaml.safe_load((out / "inventory.yml").read_text())["all"]["children"]
    for group in GROUPS:
        assert list(children[group]["hosts"]) == [h.name for h in inventory.groups[group]]
    assert inventory.groups["agents"]
