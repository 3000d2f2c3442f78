"""Bad input an operator can meet, one case at a time: each is one line that names the file
(or the lab) and says what is wrong and what to do, with a clear exit code."""

import base64
import json
import os
import re
from pathlib import Path

import pytest
from cmdop_install.lab import core, system
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.support.sites import TEST_KEY, key_env, make_site

pytestmark = pytest.mark.unit

ERROR = "cmdop-install: error: "


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    with key_env():
        made = make_site(tmp_path / "site")
    monkeypatch.delenv("CMDOP_INSTALL_KEY", raising=False)
    return made


def _use_key_file(site: Path, key_file: Path) -> None:
    toml = site / "site.toml"
    text = re.sub(r'(?m)^key_file = ""$', f'key_file = "{key_file}"', toml.read_text())
    assert str(key_file) in text
    toml.write_text(text)


# ---------------------------------------------------------------- the key file


def test_key_file_of_raw_bytes_is_one_line_naming_the_file(site: Path, run) -> None:
    key_file = site.parent / "raw.key"
    key_file.write_bytes(bytes(range(224, 256)))  # 32 raw bytes, not their base64
    key_file.chmod(0o600)
    _use_key_file(site, key_file)
    code, _, err = run("secrets", "list", str(site))
    assert code == 1
    assert err == (f"{ERROR}{key_file}: not a key file: it holds binary data (expected one "
                   "line of base64 encoding 32 bytes, as `cmdop-install init` writes it)\n")


def test_key_file_of_wrong_length_says_the_expected_format(site: Path, run) -> None:
    key_file = site.parent / "short.key"
    key_file.write_text(base64.b64encode(b"x" * 16).decode() + "\n")
    key_file.chmod(0o600)
    _use_key_file(site, key_file)
    code, _, err = run("secrets", "show", str(site), "owner_password")
    assert code == 1
    assert err == (f"{ERROR}{key_file}: not a key (expected one line of base64 encoding "
                   "32 bytes, as `cmdop-install init` writes it)\n")


def test_the_real_key_file_opens(site: Path, run) -> None:
    key_file = site.parent / "good.key"
    key_file.write_text(TEST_KEY + "\n")
    key_file.chmod(0o600)
    _use_key_file(site, key_file)
    code, out, err = run("secrets", "list", str(site))
    assert (code, err) == (0, "") and "owner_password" in out


# ---------------------------------------------------------------- secrets.enc


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)


def test_wrong_key_is_reported_as_wrong_key(site: Path, run, monkeypatch) -> None:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", base64.b64encode(os.urandom(32)).decode())
    code, _, err = run("secrets", "list", str(site))
    assert code == 1
    assert err == f"{ERROR}cannot decrypt secrets.enc: wrong key (CMDOP_INSTALL_KEY)\n"


def test_every_flipped_byte_is_damage_never_a_wrong_key(site: Path, run, keyed) -> None:
    path = site / "secrets.enc"
    original = path.read_bytes()
    for at in range(len(original)):
        damaged = bytearray(original)
        damaged[at] ^= 0x01
        path.write_bytes(bytes(damaged))
        code, _, err = run("secrets", "list", str(site))
        assert code == 1, at
        assert err.startswith(f"{ERROR}secrets.enc: damaged") and "wrong key" not in err, (at, err)
        assert "restore it from a backup" in err and err.count("\n") == 1
    path.write_bytes(original)
    assert run("secrets", "list", str(site))[0] == 0


def test_a_consistent_edit_with_the_right_key_is_reported_as_modified(site: Path, run,
                                                                       keyed) -> None:
    import hashlib

    path = site / "secrets.enc"
    body = bytearray(path.read_bytes()[:-32])
    body[-20] ^= 0x01  # inside the ciphertext; the checksum is made to match again
    path.write_bytes(bytes(body) + hashlib.sha256(bytes(body)).digest())
    code, _, err = run("secrets", "list", str(site))
    assert code == 1
    assert err == (f"{ERROR}secrets.enc: modified: the key is right but the content does not "
                   "authenticate (restore it from a backup)\n")


def _write_format_1(site: Path, entries: dict) -> None:
    """secrets.enc as the first release wrote it: magic | nonce | AES-GCM(JSON), fixed AAD."""
    nonce = os.urandom(12)
    plain = json.dumps({"version": 1, "secrets": entries}, sort_keys=True).encode()
    sealed = AESGCM(base64.b64decode(TEST_KEY)).encrypt(
        nonce, plain, b"cmdop-install secrets.enc v1")
    path = site / "secrets.enc"
    path.write_bytes(b"CMDOPSEC1\n" + nonce + sealed)
    path.chmod(0o600)


def _values(run, site: Path, names) -> dict[str, str]:
    values = {}
    for name in names:
        code, out, err = run("secrets", "show", str(site), name)
        assert code == 0, err
        values[name] = out.rstrip("\n")
    return values


def test_a_format_1_file_opens_and_init_rewrites_it_as_format_2(site: Path, run,
                                                                 keyed) -> None:
    from cmdop_install.secrets import SPECS

    before = _values(run, site, SPECS)
    entries = {name: {"value": value, "created": "2026-01-01T00:00:00Z", "source": "generated"}
               for name, value in before.items()}
    _write_format_1(site, entries)
    assert _values(run, site, SPECS) == before
    assert (site / "secrets.enc").read_bytes().startswith(b"CMDOPSEC1\n")  # reading writes nothing

    code, _, err = run("init", str(site))
    assert code == 0, err
    assert (site / "secrets.enc").read_bytes().startswith(b"CMDOPSEC2\n")
    assert _values(run, site, SPECS) == before
    code, out, _ = run("secrets", "list", str(site))
    assert "2026-01-01T00:00:00Z" in out  # creation times survive the upgrade


def test_a_format_1_file_with_the_wrong_key_says_it_cannot_tell(site: Path, run,
                                                               monkeypatch) -> None:
    _write_format_1(site, {})
    monkeypatch.setenv("CMDOP_INSTALL_KEY", base64.b64encode(os.urandom(32)).decode())
    code, _, err = run("secrets", "list", str(site))
    assert code == 1
    assert err == (f"{ERROR}cannot decrypt secrets.enc: wrong key (CMDOP_INSTALL_KEY) or a "
                   "damaged file; this format 1 file carries no key check to tell which\n")


# ---------------------------------------------------------------- which lab


@pytest.fixture
def lab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CMDOP_LAB_HOME", str(tmp_path / "labs"))
    return tmp_path / "labs"


def _make_lab(name: str) -> None:
    state = core._new_state(name)
    state.hosts = core.wanted_hosts(state, 1, ())
    state.dir.mkdir(parents=True)
    state.save()
    system.write_containers_conf()  # `lab status` asks the real podman for the hosts' state


def test_lab_status_uses_the_only_lab_whatever_its_name(lab_home: Path, run) -> None:
    _make_lab("unitonly")  # no podman host carries this lab's label
    code, out, err = run("lab", "status", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["name"] == "unitonly"
    assert [(h["name"], h["state"]) for h in info["hosts"]] == [("host1", "missing")]


@pytest.mark.parametrize("argv", [["status"], ["ssh", "host1"], ["down"]])
def test_with_several_labs_the_command_lists_them(lab_home: Path, run, argv) -> None:
    _make_lab("demo")
    _make_lab("other")
    code, _, err = run("lab", *argv)
    assert code == 1
    assert err == f"{ERROR}2 labs exist (demo, other): choose one with --name\n"
    assert (lab_home / "demo/state.json").exists() and (lab_home / "other/state.json").exists()


@pytest.mark.parametrize("argv", [["status"], ["ssh", "host1"]])
def test_with_no_lab_the_command_says_how_to_make_one(lab_home: Path, run, argv) -> None:
    code, _, err = run("lab", *argv)
    assert code == 1
    assert err == f"{ERROR}there is no lab (start one with `cmdop-install lab up`)\n"
