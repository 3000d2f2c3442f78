"""The signed offline bundle: keygen, the tar's signed manifest, and verify refusing tampering.

The heavy part (apt closure and wheel downloads) is proven by the lab tier; here a bundle is
written by the same ``write_bundle`` from small files, then tampered with at the byte level.
"""

import fcntl
import io
import json
import stat
import tarfile

import pytest
from cmdop_install import bundle
from cmdop_install.cli import main
from cmdop_install.errors import UserError

pytestmark = pytest.mark.unit


@pytest.fixture
def keys(tmp_path):
    key = tmp_path / "keys" / "sign.key"
    pub = bundle.keygen(key)
    return key, pub


@pytest.fixture
def made(tmp_path, keys):
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for name, data in {"debs/a_1_amd64.deb": b"deb a", "debs/Packages": b"Package: a\n",
                       "wheels/cmdop-agent/x-1-py3-none-any.whl": b"wheel x",
                       "sbom.cdx.json": b"{}"}.items():
        path = src / name.replace("/", "_")
        path.write_bytes(data)
        files[name] = path
    out = tmp_path / "b.bundle"
    bundle.write_bundle(out, files, {"target": "debian-12-amd64"}, keys[0])
    return out


def _members(path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _rewrite(path, members) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_keygen_writes_a_0600_key_and_refuses_to_replace_it(tmp_path, keys) -> None:
    key, pub = keys
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(UserError, match="already there"):
        bundle.keygen(key)
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.toml").write_text("")
    with pytest.raises(UserError, match="site folder"):
        bundle.keygen(site / "sign.key")


def test_an_intact_bundle_verifies_and_extracts_what_the_manifest_lists(tmp_path, made, keys
                                                                        ) -> None:
    checked = bundle.verify(made, keys[1], extract_to=tmp_path / "x")
    assert sorted(checked.manifest["files"]) == ["debs/Packages", "debs/a_1_amd64.deb",
                                                 "sbom.cdx.json",
                                                 "wheels/cmdop-agent/x-1-py3-none-any.whl"]
    assert (tmp_path / "x" / "debs" / "a_1_amd64.deb").read_bytes() == b"deb a"
    assert "  debs/a_1_amd64.deb\n" in bundle.sha256sums(checked.manifest)


def test_one_flipped_byte_is_refused_naming_the_file(made, keys) -> None:
    raw = bytearray(made.read_bytes())
    at = raw.index(b"wheel x")
    raw[at] ^= 0x01
    made.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"wheels/cmdop-agent/x-1-py3-none-any\.whl: changed"):
        bundle.verify(made, keys[1])


def test_a_removed_file_is_refused_naming_it(made, keys) -> None:
    _rewrite(made, [(m, d) for m, d in _members(made) if m.name != "debs/a_1_amd64.deb"])
    with pytest.raises(UserError, match=r"debs/a_1_amd64\.deb: missing"):
        bundle.verify(made, keys[1])


def test_an_added_file_is_refused_naming_it(made, keys) -> None:
    members = _members(made)
    members.append((tarfile.TarInfo("debs/evil_1_amd64.deb"), b"extra"))
    _rewrite(made, members)
    with pytest.raises(UserError, match=r"debs/evil_1_amd64\.deb: extra file"):
        bundle.verify(made, keys[1])


def test_a_signature_by_another_key_is_refused(tmp_path, made, keys) -> None:
    other_key = tmp_path / "other" / "sign.key"
    bundle.keygen(other_key)
    with pytest.raises(UserError, match="not signed by"):
        bundle.verify(made, other_key.with_name("sign.key.pub"))
    # the same files re-signed by the other key: refused against the operator's key too
    members = _members(made)
    manifest = next(d for m, d in members if m.name == bundle.MANIFEST)
    resigned = bundle._load_private(other_key).sign(manifest)
    _rewrite(made, [(m, resigned if m.name == bundle.SIGNATURE else d) for m, d in members])
    with pytest.raises(UserError, match="not signed by"):
        bundle.verify(made, keys[1])


def test_a_changed_manifest_is_refused(made, keys) -> None:
    members = _members(made)
    out = []
    for m, d in members:
        if m.name == bundle.MANIFEST:
            manifest = json.loads(d)
            manifest["files"]["debs/a_1_amd64.deb"]["sha256"] = "0" * 64
            d = json.dumps(manifest).encode()
        out.append((m, d))
    _rewrite(made, out)
    with pytest.raises(UserError, match="not signed by"):
        bundle.verify(made, keys[1])


def test_verify_command_says_one_line_and_exits_1(made, keys, capsys) -> None:
    assert main(["bundle", "verify", str(made), "--pubkey", str(keys[1])]) == 0
    assert "signature and 4 files verified" in capsys.readouterr().out
    raw = bytearray(made.read_bytes())
    raw[raw.index(b"Package: a")] ^= 0x20
    made.write_bytes(bytes(raw))
    assert main(["bundle", "verify", str(made), "--pubkey", str(keys[1])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cmdop-install: error: {made}: debs/Packages: changed (its SHA-256 is not "
                   "the one in the signed manifest)"]


def test_a_file_outside_the_layout_is_never_written(tmp_path, keys) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(UserError, match="unexpected file"):
        bundle.write_bundle(tmp_path / "b", {"../etc/passwd": src}, {}, keys[0])


@pytest.fixture
def site_with_bundle(tmp_path, monkeypatch, keys):
    from tests.support.sites import TEST_KEY, make_site

    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    # an address nothing answers on: the refusals below must come before any SSH
    return make_site(tmp_path / "site", {"bundle.pubkey": str(keys[1])}, agents=True,
                     address="10.89.250.250")


@pytest.fixture
def no_host_touched(monkeypatch):
    from cmdop_install import deploy

    touched = []
    monkeypatch.setattr(deploy, "read_facts", lambda *a, **k: touched.append(a))
    monkeypatch.setattr(deploy, "run_deploy", lambda *a, **k: touched.append(a))
    return touched


@pytest.mark.parametrize("tamper", ["flip", "remove", "add", "other_key"])
def test_deploy_and_rollout_refuse_a_tampered_bundle_before_any_host(
        tamper, tmp_path, made, keys, site_with_bundle, no_host_touched, capsys) -> None:
    members = _members(made)
    if tamper == "flip":
        raw = bytearray(made.read_bytes())
        raw[raw.index(b"deb a")] ^= 0x01
        made.write_bytes(bytes(raw))
        named = "debs/a_1_amd64.deb: changed"
    elif tamper == "remove":
        _rewrite(made, [(m, d) for m, d in members if m.name != "sbom.cdx.json"])
        named = "sbom.cdx.json: missing"
    elif tamper == "add":
        _rewrite(made, [*members, (tarfile.TarInfo("wheels/cmdop-agent/evil.whl"), b"x")])
        named = "wheels/cmdop-agent/evil.whl: extra file"
    else:
        other = tmp_path / "other" / "sign.key"
        bundle.keygen(other)
        manifest = next(d for m, d in members if m.name == bundle.MANIFEST)
        sig = bundle._load_private(other).sign(manifest)
        _rewrite(made, [(m, sig if m.name == bundle.SIGNATURE else d) for m, d in members])
        named = "is not signed by"
    before = _site_files(site_with_bundle)
    for argv in (["deploy", str(site_with_bundle), "--bundle", str(made)],
                 ["agents", "rollout", str(site_with_bundle), "--bundle", str(made)]):
        assert main(argv) == 1
        assert named in capsys.readouterr().err
    assert no_host_touched == []
    # no deploy record, no rollout state, nothing rewritten; the lock file empty and released
    assert _site_files(site_with_bundle) == before
    with open(site_with_bundle / ".rollout.lock", "rb") as lock:
        assert lock.read() == b""
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _site_files(site) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(site)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in site.rglob("*") if p.is_file() and p.name != ".rollout.lock"}


def test_a_bundle_without_a_pubkey_in_site_toml_is_refused(tmp_path, made, monkeypatch,
                                                            no_host_touched, capsys) -> None:
    from tests.support.sites import TEST_KEY, make_site

    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site = make_site(tmp_path / "site", address="10.89.250.250")
    assert main(["deploy", str(site), "--bundle", str(made)]) == 1
    assert "site.toml: [bundle] pubkey: required" in capsys.readouterr().err
    assert no_host_touched == []


def test_site_toml_bundle_paths_must_be_absolute(tmp_path) -> None:
    from cmdop_install.site import parse_site

    with pytest.raises(UserError, match=r"site\.toml:2: .*bundle.*file.*absolute"):
        parse_site('[bundle]\nfile = "cmdop.bundle"\n')


def test_a_deploy_from_a_bundle_plans_apt_from_the_bundle_only(tmp_path) -> None:
    """Every host of a site planned on pyinfra's fresh @fake hosts: with bundle.json in its
    payload it gets the verified repository and the bundle's packages, and pyinfra's
    apt.packages (which runs `apt-get update` against the host's own sources) never."""
    from cmdop_install import deploy
    from cmdop_install.runner import run_deploy
    from cmdop_install.sitedir import SiteDir

    from tests.installer.test_site_deploy_plan import FRESH_DEBIAN, WHEELS
    from tests.support.sites import key_env, make_site

    with key_env():
        site = SiteDir.load(make_site(tmp_path / "s", agents=True))
        payload = tmp_path / "payload"
        facts = {"digest": "d" * 64, "path": "/b", "manifest": "/m", "sums": "/s", "count": 1}
        for host in site.inventory.hosts():
            folder = payload / "@fake" / host.name
            deploy.write_payload(folder, site, host.name)
            deploy.write_extras(folder, site, host.name, WHEELS)
            (folder / "bundle.json").write_text(json.dumps(facts))
        groups = {group: [(f"@fake/{name}", FRESH_DEBIAN) for name, _ in hosts]
                  for group, hosts in site.inventory.pyinfra_groups().items()}
        result = run_deploy(groups, deploy.SITE_DEPLOY, dry_run=True,
                            data={"cmdop_payload": str(payload)})
    assert result.failed == []
    for name, host in result.hosts.items():
        ops = [op.name.removeprefix("CMDOP site | ") for op in host.ops if op.changed]
        assert ops[:3] == ["Private upload folder", "Offline bundle", "Debian packages (bundle)"
                           ], (name, ops)
        assert "Debian packages" not in ops, (name, ops)


def test_an_opened_bundle_gives_its_wheelhouses_keyed_by_its_signed_manifest(tmp_path, keys
                                                                           ) -> None:
    src = tmp_path / "w"
    src.mkdir()
    files = {}
    for name in ("cmdop_agent-0.3.0-py3-none-any.whl", "requirements.txt"):
        (src / name).write_text(name)
        files[f"wheels/cmdop-agent/{name}"] = src / name
    out = tmp_path / "b.bundle"
    bundle.write_bundle(out, files, {"target": "debian-12-amd64"}, keys[0])
    config = {"bundle": {"file": str(out), "pubkey": str(keys[1])}}
    with bundle.opened(config, None) as offline:
        assert offline is not None
        release = offline.agent_release(None)
        assert release.version == "0.3.0"
        assert release.wheelhouse["key"] == f"cmdop-agent-{offline.digest[:16]}"
        assert release.wheelhouse["package_wheel"] == "cmdop_agent-0.3.0-py3-none-any.whl"
        assert offline.host_facts["count"] == 2
        with pytest.raises(UserError, match="carries agent 0.3.0 only"):
            offline.agent_release("0.4.0")
        with pytest.raises(UserError, match="has no wheels/cmdop-server"):
            offline.wheelhouse("cmdop-server")
        unpacked = offline.root
    assert not unpacked.exists()  # the unpacked copy lives for one run only
    with bundle.opened({"bundle": {"file": "", "pubkey": ""}}, None) as online:
        assert online is None
