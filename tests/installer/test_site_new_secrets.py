"""A site made by an older release lacks the secrets a newer one needs (the migration
admin's password came with the data-only app logins): render and deploy generate only the
missing ones, as `init` does, instead of failing; existing values stay."""

from pathlib import Path

import pytest
from cmdop_install.cli import main
from cmdop_install.sitedir import SiteDir

from tests.support.sites import TEST_KEY, make_site

pytestmark = pytest.mark.unit

NEW = "postgres_password_admin"


def test_render_generates_a_missing_secret_and_keeps_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site_dir = make_site(tmp_path / "site")
    store = SiteDir.load(site_dir).store
    before = store.values()
    assert NEW in before
    del store._entries[NEW]  # as an older release wrote it
    store._dirty = True
    store.save()

    assert main(["render", str(site_dir), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"generated secrets: {NEW}" in out
    after = SiteDir.load(site_dir).store.values()
    assert set(after) == set(before)
    assert {k: v for k, v in after.items() if k != NEW} == {
        k: v for k, v in before.items() if k != NEW
    }
    assert after[NEW] != before[NEW] and after[NEW] not in out
