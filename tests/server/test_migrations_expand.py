"""Migrations expand, then contract a release later (docs/upgrades.md): the schema after this
release's migrations must still serve the previous release's code, which keeps running while
they apply and until its workers are replaced.

The check compares two states of Django's migration graph, the previous release's (the
migrations present at its git tag, ``v*``, or at ``CMDOP_PREVIOUS_RELEASE``) and this
one's: every table and column the old models use must still exist with the same type and no
stricter nullability, and every column the old code does not know must accept its INSERTs
(nullable, or with a database default). The rule's own cases are proved on synthetic states.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.apps import apps
from django.db import models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ModelState, ProjectState

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "server/src/cmdop_server"


def _columns(model: ModelState) -> dict[str, models.Field]:
    columns = {}
    for name, field in model.fields.items():
        if field.many_to_many:
            continue  # a table of its own, compared as a model
        default = f"{name}_id" if field.is_relation else name
        columns[field.db_column or default] = field
    return columns


def _table(app: str, name: str, model: ModelState) -> str:
    return model.options.get("db_table") or f"{app}_{name}"


def incompatible(old: ProjectState, new: ProjectState) -> list[str]:
    """What the previous release's code would trip over in the new schema, one line each."""
    problems = []
    tables = {_table(app, name, m): m for (app, name), m in new.models.items()}
    for (app, name), model in old.models.items():
        table = _table(app, name, model)
        now = tables.get(table)
        if now is None:
            problems.append(f"{table}: dropped or renamed, but the previous release uses it")
            continue
        new_columns = _columns(now)
        for column, field in _columns(model).items():
            after = new_columns.get(column)
            if after is None:
                problems.append(f"{table}.{column}: dropped or renamed, but the previous "
                                "release reads and writes it")
            elif type(after) is not type(field):
                problems.append(f"{table}.{column}: type changes from {type(field).__name__} "
                                f"to {type(after).__name__}")
            elif field.null and not after.null:
                problems.append(f"{table}.{column}: becomes NOT NULL, but the previous release "
                                "may write NULL")
        for column, field in new_columns.items():
            if (column not in _columns(model) and not field.null
                    and field.db_default is models.NOT_PROVIDED):
                problems.append(f"{table}.{column}: new NOT NULL column without a database "
                                "default (db_default=): the previous release's INSERTs fail")
    return problems


def _state(*models_: ModelState) -> ProjectState:
    state = ProjectState()
    for model in models_:
        state.add_model(model)
    return state


def _thing(**extra: models.Field) -> ModelState:
    fields = {"id": models.BigAutoField(primary_key=True),
              "name": models.CharField(max_length=20),
              "note": models.TextField(null=True)}
    return ModelState("demo", "thing", list({**fields, **extra}.items()))


@pytest.mark.parametrize("new, problem", [
    (_state(), "demo_thing: dropped or renamed"),
    (_state(ModelState("demo", "thing", [("id", models.BigAutoField(primary_key=True)),
                                         ("note", models.TextField(null=True))])),
     "demo_thing.name: dropped or renamed"),
    (_state(ModelState("demo", "thing", [("id", models.BigAutoField(primary_key=True)),
                                         ("title", models.CharField(max_length=20)),
                                         ("note", models.TextField(null=True))])),
     "demo_thing.name: dropped or renamed"),  # a rename is a drop to the old code (and
    # the new name a NOT NULL column it cannot fill)
    (_state(_thing(note=models.TextField())), "demo_thing.note: becomes NOT NULL"),
    (_state(_thing(note=models.IntegerField(null=True))), "demo_thing.note: type changes"),
    (_state(_thing(flag=models.BooleanField(default=False))),
     "demo_thing.flag: new NOT NULL column without a database default"),
])
def test_a_contracting_change_is_named(new, problem):
    problems = incompatible(_state(_thing()), new)
    assert problems and problems[0].startswith(problem), problems


@pytest.mark.parametrize("new", [
    _state(_thing()),
    _state(_thing(flag=models.BooleanField(null=True))),
    _state(_thing(flag=models.BooleanField(default=False, db_default=False))),
    _state(_thing(name=models.CharField(max_length=20, null=True))),  # looser is fine
    _state(_thing(), ModelState("demo", "other", [("id", models.BigAutoField(primary_key=True)),
                                                  ("n", models.IntegerField())])),
])
def test_an_expanding_change_passes(new):
    assert incompatible(_state(_thing()), new) == []


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout


def _previous_release() -> str | None:
    pinned = os.environ.get("CMDOP_PREVIOUS_RELEASE")
    if pinned:
        return pinned
    tags = _git("tag", "--merged", "HEAD", "--sort=-creatordate", "--list", "v[0-9]*").split()
    if tags:
        return tags[0]
    # no tag yet: the commit deployed sites run (server/PREVIOUS_RELEASE), if this clone has it
    recorded = (REPO / "server" / "PREVIOUS_RELEASE").read_text().split()[0]
    known = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{recorded}^{{commit}}"],
                           capture_output=True, check=False).returncode == 0
    return recorded if known else None


def test_this_releases_migrations_keep_the_previous_release_working():
    ref = _previous_release()
    if ref is None:
        pytest.skip("no release tag (v*) yet: nothing released to stay compatible with; "
                    "CMDOP_PREVIOUS_RELEASE=<git ref> checks against any commit")
    labels = {Path(c.path).name: c.label for c in apps.get_app_configs()
              if Path(c.path).parent == SERVER}
    released: dict[str, str] = {}
    for path in _git("ls-tree", "-r", "--name-only", ref, "--", str(SERVER)).split():
        parts = Path(path).parts
        if len(parts) >= 2 and parts[-2] == "migrations" and parts[-1][:4].isdigit():
            label = labels[parts[-3]]
            released[label] = max(released.get(label, ""), parts[-1].removesuffix(".py"))
    loader = MigrationLoader(None, ignore_no_migrations=True)
    old = loader.project_state(nodes=list(released.items()), at_end=True)
    new = loader.project_state()
    ours = set(labels.values())
    old.models = {k: v for k, v in old.models.items() if k[0] in ours}
    new.models = {k: v for k, v in new.models.items() if k[0] in ours}
    assert incompatible(old, new) == []
