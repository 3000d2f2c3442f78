"""Ship the repo's templates/ (the ONE template source) inside cmdop-install's wheel.

templates/ lives at the repo top because the installer, the pyinfra deploys and the
Ansible roles share it. From a checkout we copy it in (sdist: into the package folder, so
a wheel built from the sdist finds it as package data; wheel: straight into the package).
"""

from __future__ import annotations

from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class TemplatesHook(BuildHookInterface):
    PLUGIN_NAME = "cmdop-templates"

    def initialize(self, version: str, build_data: dict) -> None:
        templates = Path(self.root).parent / "templates"
        if not templates.is_dir():
            return  # building from our own sdist: they are already in the package
        target = "cmdop_install/templates" if self.target_name == "wheel" else (
            "src/cmdop_install/templates")
        build_data["force_include"][str(templates)] = target
