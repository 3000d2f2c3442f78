"""Backup archives: sealed with the site's key in authenticated chunks, so a changed, cut,
extended or foreign archive is refused in one line; the site folder without its key."""

import base64
import io
import os
import re
import stat
import tarfile
from pathlib import Path

import pytest
from cmdop_install import backup, restore
from cmdop_install.backup import site_files
from cmdop_install.cli import main
from cmdop_install.errors import UserError
from cmdop_install.secrets import SecretStore
from cmdop_install.site import parse_site
from cmdop_install.sitedir import SiteDir

from tests.support.sites import TEST_KEY, make_site

pytestmark = pytest.mark.unit

CHUNK = 1 << 20


def _store(tmp_path, key: bytes = base64.b64decode(TEST_KEY)) -> SecretStore:
    return SecretStore(tmp_path / "nosite", key, "test")


@pytest.fixture
def sealed(tmp_path):
    """A 2.5-chunk plaintext and its archive."""
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(CHUNK * 2 + CHUNK // 2))
    archive = tmp_path / "a.cmdop-backup"
    _store(tmp_path).seal_file(plain, archive)
    return plain, archive


def test_an_archive_opens_to_what_was_sealed_and_is_private(tmp_path, sealed):
    plain, archive = sealed
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    assert plain.read_bytes()[:64] not in archive.read_bytes()
    out = tmp_path / "out"
    _store(tmp_path).open_sealed(archive, out)
    assert out.read_bytes() == plain.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize("size", [0, 5, CHUNK, CHUNK * 2])
def test_chunk_boundaries_and_an_empty_file(tmp_path, size):
    plain, archive, out = tmp_path / "p", tmp_path / "a", tmp_path / "o"
    plain.write_bytes(os.urandom(size))
    _store(tmp_path).seal_file(plain, archive)
    _store(tmp_path).open_sealed(archive, out)
    assert out.read_bytes() == plain.read_bytes()


def _damage(archive, how: str) -> None:
    data = bytearray(archive.read_bytes())
    if how == "one flipped byte":
        data[len(data) // 2] ^= 0x01
    elif how == "last chunk cut off":  # every chunk before it still authenticates
        data = data[: 10 + 16 + 8 + 2 * (CHUNK + 16)]
    elif how == "bytes appended":
        data += b"\0" * 32
    elif how == "two chunks swapped":
        start = 10 + 16 + 8
        one, two = start + CHUNK + 16, start + 2 * (CHUNK + 16)
        data = data[:start] + data[one:two] + data[start:one] + data[two:]
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["one flipped byte", "last chunk cut off", "bytes appended",
                                 "two chunks swapped"])
def test_a_changed_archive_is_refused_in_one_line(tmp_path, sealed, how):
    _, archive = sealed
    _damage(archive, how)
    with pytest.raises(UserError) as refused:
        _store(tmp_path).open_sealed(archive, tmp_path / "out")
    assert refused.value.message == (f"{archive}: damaged or modified (its content does not "
                                     "authenticate with this site's key)")


def test_another_sites_archive_and_a_stranger_file_are_refused(tmp_path, sealed):
    _, archive = sealed
    other = _store(tmp_path, os.urandom(32))
    with pytest.raises(UserError, match=r"made with another secrets key \(another site's"):
        other.open_sealed(archive, tmp_path / "out")
    stranger = tmp_path / "x.tar"
    stranger.write_bytes(b"not an archive at all, but long enough to have a header")
    with pytest.raises(UserError, match="not a cmdop-install backup archive"):
        _store(tmp_path).open_sealed(stranger, tmp_path / "out")


def test_the_site_folder_goes_in_without_its_key_or_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site_dir = make_site(tmp_path / "site")
    key = site_dir / "keys" / "site.key"
    key.parent.mkdir()
    key.write_text(TEST_KEY + "\n")
    key.chmod(0o600)
    toml = site_dir / "site.toml"
    toml.write_text(toml.read_text().replace('\nkey_file = ""', f'\nkey_file = "{key}"'))
    (site_dir / ".rollout.lock").write_text("")
    (site_dir / "mysite-20260101T000000Z.cmdop-backup").write_text("an earlier archive")
    (site_dir / "backups").mkdir()
    (site_dir / "backups" / "old.cmdop-backup").write_text("x")
    monkeypatch.delenv("CMDOP_INSTALL_KEY", raising=False)
    site = SiteDir.load(site_dir)
    assert site.config["site"]["key_file"] == str(key)
    names = {str(p) for p in site_files(site, skip={(site_dir / "backups").resolve()})}
    assert {"site.toml", "inventory.py", "secrets.enc", "pki/ca.crt", "pki/ca.key"} <= names
    assert not {n for n in names if n.startswith(("keys/", "backups/", ".rollout"))
                or n.endswith(".cmdop-backup")}


@pytest.mark.parametrize("line, message", [
    ('schedule = "daily; rm -rf /"', "must be a systemd calendar expression"),
    ('directory = "backups"', "must be an absolute path of its own"),
    ('directory = "/var/backups/../etc"', "must be an absolute path of its own"),
    ("keep = 0", "must be between 1 and 365"),
])
def test_backup_settings_are_checked(line, message):
    with pytest.raises(UserError, match=message):
        parse_site(f"[backup]\n{line}\n")



@pytest.fixture
def archived(tmp_path, monkeypatch):
    """A site, and a backup archive of it with two small stand-in dumps."""
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site = SiteDir.load(make_site(tmp_path / "site"))
    fetched = tmp_path / "db"
    fetched.mkdir()
    for name in backup.DUMPS:
        (fetched / name).write_bytes(os.urandom(1000))
    plain, archive = tmp_path / "plain.tar", tmp_path / "site.cmdop-backup"
    backup._write_tar(plain, site, fetched, "20260101T000000Z", skip=set())
    site.store.seal_file(plain, archive)
    return site, plain, archive


def _resealed(site, plain, tmp_path, change, extra: bool) -> Path:
    """The archive's tar with ``change(name, data) -> data | None`` applied (None: left out)
    and an ``extra`` member, sealed again with the site's key, as someone holding it could."""
    changed = tmp_path / "changed.tar"
    with tarfile.open(plain) as old, tarfile.open(changed, "w") as new:
        for info in old.getmembers():
            data = change(info.name, old.extractfile(info).read())
            if data is not None:
                info.size = len(data)
                new.addfile(info, io.BytesIO(data))
        if extra:
            info = tarfile.TarInfo("site/extra")
            new.addfile(info, io.BytesIO(b""))
    archive = tmp_path / "changed.cmdop-backup"
    site.store.seal_file(changed, archive)
    return archive


def test_an_archive_of_this_site_opens_with_its_manifest(archived, tmp_path):
    site, _, archive = archived
    manifest = restore.opened(site, archive, _fresh(tmp_path))
    assert manifest["site"] == "testsite" and manifest["created"] == "20260101T000000Z"
    assert {"db/app.dump", "db/audit.dump", "site/site.toml", "site/secrets.enc"} <= set(
        manifest["files"])


def _flip_app_dump(name: str, data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1]) if name == "db/app.dump" else data


@pytest.mark.parametrize("change, extra, refusal", [
    (_flip_app_dump, False, "db/app.dump does not match its checksum"),
    (lambda n, d: None if n == "db/audit.dump" else d, False,
     "its members differ from its manifest (db/audit.dump)"),
    (lambda n, d: d, True, "its members differ from its manifest (site/extra)"),
])
def test_a_member_that_differs_from_the_manifest_is_refused(archived, tmp_path, change, extra,
                                                             refusal):
    site, plain, _ = archived
    archive = _resealed(site, plain, tmp_path, change, extra)
    with pytest.raises(UserError, match=re.escape(refusal)):
        restore.opened(site, archive, _fresh(tmp_path))


def test_another_sites_archive_is_refused_by_its_ca(archived, tmp_path):
    _, _, archive = archived
    other = SiteDir.load(make_site(tmp_path / "other"))  # same name and key, its own CA
    with pytest.raises(UserError, match="belongs to site 'testsite' with another CA"):
        restore.opened(other, archive, _fresh(tmp_path))


def _fresh(tmp_path) -> Path:
    into = tmp_path / f"into-{len(list(tmp_path.iterdir()))}"
    into.mkdir()
    return into


@pytest.mark.parametrize("problem", ["one flipped byte", "another site's"])
def test_the_restore_command_refuses_in_one_line_before_any_host(archived, tmp_path, capsys,
                                                                 monkeypatch, problem):
    site, _, archive = archived
    target = site.path
    if problem == "one flipped byte":
        _damage(archive, problem)
    else:
        target = make_site(tmp_path / "other")
    monkeypatch.setattr("cmdop_install.restore.run_deploy", _no_host)
    assert main(["restore", str(target), str(archive), "--yes"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(archive) in err, err


def _no_host(*args, **kwargs):
    raise AssertionError("a refused archive must not reach any host")


@pytest.mark.parametrize("kind", ["symlink", "parent", "absolute"])
def test_an_archive_member_outside_plain_files_is_never_extracted(tmp_path, kind):
    """The hand-made "data" filter (Debian 12's Python 3.11.2 has no extractall(filter=))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo({"symlink": "link", "parent": "../evil", "absolute": "/etc/evil"}
                               [kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info, io.BytesIO(b""))
    buf.seek(0)
    into = tmp_path / "members"
    with tarfile.open(fileobj=buf) as tar, pytest.raises(tarfile.TarError):
        restore.extract_plain_members(tar, into)
    assert not into.exists() or not any(into.iterdir())
