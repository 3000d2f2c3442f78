"""init and the secrets store: idempotent, encrypted, 0600, pinned values win, no leaks."""

import base64
import os
import stat

import pytest
from cmdop_install.cli import main
from cmdop_install.secrets import SPECS, SecretStore, weakness

from tests.support.sites import TEST_KEY

pytestmark = pytest.mark.unit

STRONG = "Zq8-vN2_pL7xR4tK9mW3bY6cH1sD5fG0jA-eU8iO2"  # 41 chars, all classes but symbols


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private XDG config home (where init keeps the key) and no key in the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CMDOP_INSTALL_KEY", raising=False)
    return tmp_path


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        import io
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _all_values(site_dir):
    store = SecretStore(site_dir, base64.b64decode(TEST_KEY), "test")
    return store.values()


def test_init_creates_site_with_key_outside_and_private_modes(home, capsys):
    site = home / "mysite"
    code, out, err = run(capsys, "init", str(site))
    assert code == 0, err
    for name in ("site.toml", "inventory.py", "secrets.enc", "pki/ca.crt", "pki/ca.key"):
        assert (site / name).exists(), name
    assert stat.S_IMODE((site / "secrets.enc").stat().st_mode) == 0o600
    assert stat.S_IMODE((site / "pki/ca.key").stat().st_mode) == 0o600
    keys = list((home / "xdg/cmdop-install/keys").glob("mysite-*.key"))
    assert len(keys) == 1 and stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    assert str(site) not in str(keys[0].parent)
    assert f'key_file = "{keys[0]}"' in (site / "site.toml").read_text()


def test_init_twice_changes_nothing(home, capsys):
    site = home / "s"
    run(capsys, "init", str(site))
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    code, out, _ = run(capsys, "init", str(site))
    assert code == 0 and "nothing to do" in out
    after = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    assert after == before  # secrets.enc byte-identical, no certificate reissued


def test_missing_secret_is_generated_and_existing_ones_kept(home, monkeypatch):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site = home / "s"
    from tests.support.sites import make_site
    make_site(site)
    before = _all_values(site)
    store = SecretStore(site, base64.b64decode(TEST_KEY), "test")
    del store._entries["agent_join_key"]
    store._dirty = True
    store.save()
    assert main(["init", str(site)]) == 0
    after = _all_values(site)
    assert {k: v for k, v in after.items() if k != "agent_join_key"} == {
        k: v for k, v in before.items() if k != "agent_join_key"}
    assert after["agent_join_key"] != before["agent_join_key"]


def test_pinned_value_wins_and_survives_init(home, capsys, monkeypatch):
    site = home / "s"
    run(capsys, "init", str(site))
    code, out, err = run(capsys, "secrets", "set", str(site), "centrifugo_api_key",
                         stdin=STRONG + "\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert STRONG not in out + err
    run(capsys, "init", str(site))
    code, out, _ = run(capsys, "secrets", "show", str(site), "centrifugo_api_key")
    assert out == STRONG + "\n"
    code, out, _ = run(capsys, "secrets", "list", str(site))
    assert "centrifugo_api_key" in out and "operator" in out


@pytest.mark.parametrize("value, why", [
    ("Ab1-xyz", "too short"),
    ("a" * 64, "distinct"),
    ("abcdefghij" * 4, "repeats"),
    ("3141592653589793238462643383279502", "entropy"),
    ("has spaces in it but is otherwise long enough 12345", "printable"),
])
def test_weak_pinned_value_is_refused_and_nothing_changes(home, capsys, monkeypatch, value,
                                                          why):
    site = home / "s"
    run(capsys, "init", str(site))
    before = (site / "secrets.enc").read_bytes()
    code, out, err = run(capsys, "secrets", "set", str(site), "redis_password_app",
                         stdin=value + "\n", monkeypatch=monkeypatch)
    assert code == 1 and why in err and value not in out + err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (site / "secrets.enc").read_bytes() == before


def test_django_key_needs_50_characters():
    assert "too short" in weakness("django_secret_key", STRONG)
    assert weakness("django_secret_key", "django-insecure-" + STRONG) is not None


def test_wrong_key_is_one_line_and_writes_nothing(home, capsys, monkeypatch):
    site = home / "s"
    run(capsys, "init", str(site))
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    monkeypatch.setenv("CMDOP_INSTALL_KEY", base64.b64encode(os.urandom(32)).decode())
    for argv in (["init", str(site)], ["secrets", "list", str(site)],
                 ["render", str(site), "--out", str(home / "out")]):
        code, out, err = run(capsys, *argv)
        assert code == 1
        assert err == ("cmdop-install: error: cannot decrypt secrets.enc: wrong key "
                       "(CMDOP_INSTALL_KEY)\n")
    assert {p: p.read_bytes() for p in site.rglob("*") if p.is_file()} == before
    assert not (home / "out").exists()


def test_missing_key_file_is_not_replaced(home, capsys):
    site = home / "s"
    run(capsys, "init", str(site))
    for key in (home / "xdg").rglob("*.key"):
        key.unlink()
    code, _, err = run(capsys, "init", str(site))
    assert code == 1 and "does not exist (restore it or set CMDOP_INSTALL_KEY)" in err
    assert not list((home / "xdg").rglob("*.key"))  # no new key that would lock us out


def test_key_file_readable_by_others_is_refused(home, capsys):
    site = home / "s"
    run(capsys, "init", str(site))
    (key,) = (home / "xdg").rglob("*.key")
    key.chmod(0o644)
    code, _, err = run(capsys, "secrets", "list", str(site))
    assert code == 1 and "chmod 600" in err


def test_list_never_shows_values_and_show_shows_one(home, capsys, monkeypatch):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site = home / "s"
    code, init_out, init_err = run(capsys, "init", str(site))
    values = _all_values(site)
    code, out, err = run(capsys, "secrets", "list", str(site))
    assert code == 0 and all(name in out for name in SPECS)
    assert not [n for n, v in values.items() if v in out + err + init_out + init_err]
    code, out, _ = run(capsys, "secrets", "show", str(site), "redis_password_app")
    assert out == values["redis_password_app"] + "\n"
    code, _, err = run(capsys, "secrets", "show", str(site), "nope")
    assert code == 1 and "unknown secret 'nope'" in err


def test_unwritable_site_dir_is_one_line(home, capsys):
    blocker = home / "a-file"
    blocker.write_text("x")
    code, out, err = run(capsys, "init", str(blocker / "site"))
    assert code == 1 and err.startswith("cmdop-install: error: ") and err.count("\n") == 1
    assert "cannot create folder" in err


def test_inventory_that_does_not_import_is_one_line(home, capsys):
    site = home / "s"
    run(capsys, "init", str(site))
    (site / "inventory.py").write_text("import does_not_exist_anywhere\npostgres = []\n")
    code, _, err = run(capsys, "check", str(site))
    assert code == 1
    assert err == ("cmdop-install: error: inventory.py:1: does not import: "
                   "ModuleNotFoundError (run `python inventory.py` to see the full error)\n")
    (site / "inventory.py").write_text("postgres = [\n")
    code, _, err = run(capsys, "check", str(site))
    assert code == 1 and "inventory.py:1: does not import: syntax error" in err


def test_malformed_site_toml_exits_2_with_its_line(home, capsys):
    site = home / "s"
    run(capsys, "init", str(site))
    text = (site / "site.toml").read_text().replace("workers = 4", "workers = \"four\"")
    (site / "site.toml").write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("workers"))
    code, out, err = run(capsys, "check", str(site))
    assert code == 2
    assert err == (f"cmdop-install: error: site.toml:{line}: control_plane.workers: "
                   "must be an integer (e.g. workers = 4)\n")
