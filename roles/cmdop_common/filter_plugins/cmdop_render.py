"""cmdop_render: render a file of cmdop-install's templates/ exactly as the installer does.

Ansible's template module cannot: its Jinja environment trims blocks, drops the trailing
newline of every included template and finalizes values its own way, so the same template
would differ by a byte here and there from `cmdop-install render`. This filter uses the
installer's settings (cmdop_install/render.py ``environment``: StrictUndefined,
keep_trailing_newline, no autoescape, Jinja's defaults otherwise) on plain data, and the
roles write its result with ansible.builtin.copy.
"""

from __future__ import annotations

import json

import jinja2
from ansible.errors import AnsibleFilterError


def environment(templates_dir: str) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - config files, not HTML
    )


def cmdop_render(context, template: str, templates_dir: str, template_vars=None) -> str:
    """``template`` (a path inside templates/) rendered with the host's exported context."""
    # plain dicts, lists and strs: what the installer renders with (no Ansible wrappers)
    plain = json.loads(json.dumps({**context, **(template_vars or {})}))
    try:
        return environment(templates_dir).get_template(template).render(plain)
    except jinja2.TemplateError as exc:
        raise AnsibleFilterError(f"template {template}: {type(exc).__name__}: {exc}") from None


def cmdop_files_in(files, folders, names=None) -> list:
    """The exported files that sit directly in one of ``folders`` (only ``names``, if given)."""
    wanted = set(folders)
    return [f for f in files if f["path"].rsplit("/", 1)[0] in wanted
            and (not names or f["path"].rsplit("/", 1)[1] in names)]


class FilterModule:
    def filters(self):
        return {"cmdop_render": cmdop_render, "cmdop_files_in": cmdop_files_in}
