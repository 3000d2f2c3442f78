"""Private files and the sealed refresh token."""

import json
import os
from pathlib import Path

import pytest
from cmdop_agent import vault
from cmdop_agent.errors import ConfigError
from cmdop_agent.files import check_private, write_private
from cmdop_agent.vault import Vault

pytestmark = pytest.mark.unit


def test_write_private_is_0600_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "d" / "cred.json"
    write_private(target, b"one")
    write_private(target, b"two")
    assert target.read_bytes() == b"two"
    assert target.stat().st_mode & 0o777 == 0o600
    assert target.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["cred.json"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_check_private_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "c"
    f.write_text("x")
    f.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o}"):
        check_private(f)


def test_check_private_refuses_other_owner_and_symlink(tmp_path: Path) -> None:
    f = tmp_path / "c"
    f.write_text("x")
    f.chmod(0o600)
    check_private(f)
    link = tmp_path / "l"
    link.symlink_to(f)
    with pytest.raises(ConfigError, match="symlink"):
        check_private(link)
    os.chown(f, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        check_private(f)


def test_seal_round_trip_and_no_plaintext(tmp_path: Path) -> None:
    v = Vault(tmp_path / "keys")
    sealed = v.seal("rt_very_secret_refresh_token")
    assert "rt_very_secret" not in sealed
    assert v.open(sealed) == "rt_very_secret_refresh_token"
    assert v.seal("same") != v.seal("same")  # fresh nonce every time
    key = tmp_path / "keys" / "refresh.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32


def test_tampering_is_detected(tmp_path: Path) -> None:
    v = Vault(tmp_path / "keys")
    sealed = v.seal("token")
    flipped = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        v.open(flipped)


def test_other_machine_or_other_key_cannot_open(tmp_path: Path, monkeypatch) -> None:
    v = Vault(tmp_path / "keys")
    sealed = v.seal("token")
    monkeypatch.setattr(vault, "_machine_id", lambda: b"another-machine")
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        v.open(sealed)
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="missing"):
        Vault(tmp_path / "elsewhere").open(sealed)


def test_credential_json_never_holds_refresh_token_in_clear(tmp_path: Path) -> None:
    v = Vault(tmp_path / "keys")
    cred = {"refresh_token_sealed": v.seal("rt_secret")}
    assert "rt_secret" not in json.dumps(cred)
