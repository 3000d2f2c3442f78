"""`rotate SITE pki_leaves` and `rotate SITE pki_ca` on a real site folder: pki/, the
trust bundles every host would receive at each phase, rollback and resume.

The deploy is the one fake: it records, with the real render, which certificates and
which trust bundle (``ca.crt``) node1 (Postgres, Redis, control plane) and agent1 would hold
after it. tests/lab/test_site_rotation_pki.py proves it on real hosts under load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cmdop_install import pki, rotation
from cmdop_install.errors import UserError
from cmdop_install.rotation import resolve
from cmdop_install.runner import HostResult, RunResult
from cmdop_install.sitedir import SiteDir
from cryptography import x509

from tests.support.sites import TEST_KEY, make_site, rotation_step

pytestmark = pytest.mark.unit

LEAVES = {"postgres": "/etc/postgresql/tls/server.crt", "redis": "/etc/redis/tls/redis.crt",
          "nginx": "/etc/nginx/tls/cmdop.crt", "app": "/etc/cmdop/tls/app.crt"}
BUNDLES = ("/etc/postgresql/tls/ca.crt", "/etc/redis/tls/ca.crt", "/etc/nginx/tls/ca.crt",
           "/etc/cmdop/tls/ca.crt")
AGENT_BUNDLE = "/etc/cmdop-agent/ca.crt"


class Hosts:
    """What node1 and agent1 hold after each deploy (a host the deploy did not reach keeps
    what it had); ``fail_at``: the deploy that is cut (Ctrl-C) instead."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.limits: list[list[str]] = []
        self.fail_at: int | None = None
        self.agent_bundle = b""

    def deploy(self, site: SiteDir, limit=None, dry_run=False) -> RunResult:
        if self.fail_at == len(self.seen):
            self.fail_at = None
            raise KeyboardInterrupt
        self.limits.append(list(limit or []))
        node = {f.path: f.content for f in site.files("node1")}
        bundles = {node[path] for path in BUNDLES}
        assert len(bundles) == 1, "every service on node1 trusts the same bundle"
        if "agents" in (limit or []):
            self.agent_bundle = {f.path: f.content for f in site.files("agent1")}[AGENT_BUNDLE]
        self.seen.append({"leaves": {k: node[p] for k, p in LEAVES.items()},
                          "bundle": bundles.pop(), "agent_bundle": self.agent_bundle})
        return RunResult(hosts={"node1": HostResult("node1")}, dry_run=False)

    @property
    def now(self) -> dict:
        return self.seen[-1]


@pytest.fixture
def site_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    return make_site(tmp_path / "site", agents=True)


@pytest.fixture
def hosts(monkeypatch) -> Hosts:
    fake = Hosts()
    monkeypatch.setattr(rotation, "deploy_site", fake.deploy)
    return fake


def _pki(site_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((site_dir / "pki").iterdir())}


def _cas(bundle: bytes) -> list[str]:
    return sorted(c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(bundle))


def _subject(site_dir: Path, name: str = "ca.crt") -> str:
    return x509.load_pem_x509_certificate((site_dir / "pki" / name).read_bytes()
                                          ).subject.rfc4514_string()


def _signed_by(leaf: bytes, site_dir: Path, ca_name: str) -> bool:
    ca = x509.load_pem_x509_certificate((site_dir / "pki" / ca_name).read_bytes())
    try:
        x509.load_pem_x509_certificate(leaf).verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - any failure means: not signed by it
        return False
    return True


def _run(site_dir: Path, action: str = "rotate", names=("pki_ca",)) -> list[str]:
    return rotation_step(site_dir, action, tuple(names))


def _rotation_files(site_dir: Path) -> list[str]:
    return sorted(p.name for p in (site_dir / "pki").iterdir()
                  if ".next." in p.name or ".previous." in p.name)


def test_leaf_rotation_gives_every_leaf_a_new_key_from_the_same_ca(site_dir, hosts) -> None:
    before = _pki(site_dir)
    lines = _run(site_dir, names=("pki_leaves",))
    # one deploy, at the switch, to the service hosts; the CA and the bundles stay
    assert hosts.limits == [rotation.HOST_GROUPS]
    assert any("phase switched: done" in line for line in lines), lines
    after = _pki(site_dir)
    assert after["ca.crt"] == before["ca.crt"] and after["ca.key"] == before["ca.key"]
    for name in ("postgres-node1", "redis-node1", "nginx-node1", "app-node1"):
        assert after[f"{name}.crt"] != before[f"{name}.crt"]
        assert after[f"{name}.key"] != before[f"{name}.key"]
        assert after[f"{name}.previous.key"] == before[f"{name}.key"]  # until --finish
        assert _signed_by(after[f"{name}.crt"], site_dir, "ca.crt")
    assert hosts.now["leaves"]["nginx"] == after["nginx-node1.crt"]
    assert hosts.now["bundle"] == before["ca.crt"]

    _run(site_dir, "finish")
    assert _rotation_files(site_dir) == []  # the replaced keys are destroyed
    assert len(hosts.seen) == 1  # --finish of the leaves deletes files here only


def test_ca_rotation_trusts_both_cas_everywhere_before_any_leaf_moves(site_dir, hosts) -> None:
    old_subject = _subject(site_dir)
    old_ca = (site_dir / "pki" / "ca.crt").read_bytes()
    _run(site_dir)
    new_subject = _subject(site_dir)
    assert new_subject != old_subject and _subject(site_dir, "ca.previous.crt") == old_subject
    # admitted: every host, agents included, trusts both CAs; the leaves are the old CA's
    admitted, switched = hosts.seen
    assert hosts.limits == [rotation.ALL_GROUPS, rotation.HOST_GROUPS]
    assert _cas(admitted["bundle"]) == _cas(admitted["agent_bundle"]) == sorted(
        [old_subject, new_subject])
    assert all(_signed_by(leaf, site_dir, "ca.previous.crt")
               for leaf in admitted["leaves"].values())
    # switched: the leaves are the new CA's, the bundles unchanged (the same bytes)
    assert all(_signed_by(leaf, site_dir, "ca.crt") for leaf in switched["leaves"].values())
    assert switched["bundle"] == admitted["bundle"]
    assert (site_dir / "pki" / pki.BUNDLE).read_bytes() == admitted["bundle"]

    lines = _run(site_dir, "finish")
    assert any(line.startswith("finished") for line in lines), lines
    retired = hosts.now
    assert hosts.limits[-1] == rotation.ALL_GROUPS
    assert _cas(retired["bundle"]) == _cas(retired["agent_bundle"]) == [new_subject]
    assert retired["leaves"] == switched["leaves"]
    assert _rotation_files(site_dir) == []  # the old CA's key is gone
    assert (site_dir / "pki" / pki.BUNDLE).read_bytes() == retired["bundle"]
    assert (site_dir / "pki" / "ca.crt").read_bytes() != old_ca
    # the next deploy's own PKI check reissues nothing: every leaf is the new CA's
    assert SiteDir.load(site_dir).complete() == []


@pytest.mark.parametrize("stop_after", ["staged", "admitted", "switched"])
def test_rollback_from_each_phase_gives_back_the_old_ca_and_leaves(site_dir, hosts,
                                                                   stop_after) -> None:
    before = _pki(site_dir)
    site = SiteDir.load(site_dir)
    r = rotation.Rotation(site, lambda line: None)
    record = r._new_record(["pki_ca"])
    r._forward(record, stop_after)
    assert r.record is not None and r.record["phase"] == stop_after

    _run(site_dir, "rollback")
    assert _pki(site_dir) == before  # the same CA, keys and leaves, nothing staged left
    if hosts.seen:  # every host that was told of the new CA is told it is gone
        assert hosts.now["bundle"] == hosts.now["agent_bundle"] == before["ca.crt"]
        assert hosts.now["leaves"]["nginx"] == before["nginx-node1.crt"]
        assert hosts.limits[-1] == rotation.ALL_GROUPS
    else:
        assert stop_after == "staged"


@pytest.mark.parametrize("cut", [0, 1])
def test_a_cut_ca_rotation_resumes_with_the_same_new_ca(site_dir, hosts, cut) -> None:
    hosts.fail_at = cut  # Ctrl-C inside the admitted (0) or switched (1) deploy
    with pytest.raises(KeyboardInterrupt):
        _run(site_dir)
    staged = {n: v for n, v in _pki(site_dir).items() if n.startswith("ca.")}
    _run(site_dir, names=())  # a rerun resumes the recorded rotation
    after = _pki(site_dir)
    new_ca = staged["ca.next.crt"] if cut == 0 else staged["ca.crt"]
    assert after["ca.crt"] == new_ca
    assert _cas(hosts.now["bundle"]) == sorted([_subject(site_dir),
                                                 _subject(site_dir, "ca.previous.crt")])
    _run(site_dir, "finish")
    assert _rotation_files(site_dir) == []


def test_a_cut_switch_of_the_files_completes_on_the_rerun(site_dir) -> None:
    site = SiteDir.load(site_dir)
    pki.stage(site_dir, site.config, site.inventory, site.store.pki_passphrase(), new_ca=True)
    staged = (site_dir / "pki" / "ca.next.crt").read_bytes()
    old = (site_dir / "pki" / "ca.crt").read_bytes()
    # cut between the two renames of ca.crt: the current file moved aside, the next not yet
    (site_dir / "pki" / "ca.crt").rename(site_dir / "pki" / "ca.previous.crt")
    pki.switch(site_dir)
    assert (site_dir / "pki" / "ca.crt").read_bytes() == staged
    assert (site_dir / "pki" / "ca.previous.crt").read_bytes() == old


def test_a_leaf_rotation_never_switches_to_a_ca_staged_before_it(site_dir, hosts) -> None:
    site = SiteDir.load(site_dir)
    # a CA rotation cut while staging, before rotation.json named it
    pki.stage(site_dir, site.config, site.inventory, site.store.pki_passphrase(), new_ca=True)
    ca = (site_dir / "pki/ca.crt").read_bytes()
    _run(site_dir, names=("pki_leaves",))
    assert (site_dir / "pki/ca.crt").read_bytes() == ca
    assert all(_signed_by(leaf, site_dir, "ca.crt") for leaf in hosts.now["leaves"].values())


def test_names_and_all(site_dir) -> None:
    assert resolve(("pki_leaves", "pki_ca"), False) == ["pki_ca"]
    assert resolve(("pki_leaves",), False) == ["pki_leaves"]
    assert "pki_ca" in resolve((), True)
    with pytest.raises(UserError, match="unknown secret 'pki'"):
        resolve(("pki",), False)


def test_dry_run_names_every_host_a_bundle_reaches_and_changes_nothing(site_dir,
                                                                      hosts) -> None:
    before = _pki(site_dir)
    lines: list[str] = []
    r = rotation.Rotation(SiteDir.load(site_dir), lines.append, dry_run=True)
    r.start_or_resume(["pki_ca"])
    assert lines[0].startswith("would enter phase staged") and "this machine only" in lines[0]
    assert "agent1" in lines[1] and "node1" in lines[1]  # admitted: every host
    assert "agent1" not in lines[2]  # switched: the service hosts only
    assert _pki(site_dir) == before and hosts.seen == []
