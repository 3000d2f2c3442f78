"""The rotation phase machine on a real site folder (secrets.enc, rotation.json, rendering).

The deploy is the one fake: it records what each host would receive at that moment (the
control plane's credential files and which blue/green logins get a password), rendered by
the real render and payload code. tests/lab/test_site_rotation.py proves it on real hosts.
"""

import fcntl
import json
import stat
from pathlib import Path

import pytest
from cmdop_install import rotation
from cmdop_install.check import secret_age_findings
from cmdop_install.cli import main
from cmdop_install.deploy import write_payload
from cmdop_install.errors import UserError
from cmdop_install.hashing import redis_acl_hash
from cmdop_install.rotation import Rotation, resolve
from cmdop_install.runner import HostResult, RunResult
from cmdop_install.secrets import SecretStore
from cmdop_install.sitedir import SiteDir

from tests.support.sites import TEST_KEY, make_site, rotation_step, write_site

pytestmark = pytest.mark.unit


class Hosts:
    """What node1 holds after each deploy; ``fail_at``: the deploy that raises instead.
    ``events``: the deploys and the reads of gunicorn's workers, in order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.seen: list[dict] = []
        self.fail_at: int | None = None
        self.events: list[str] = []

    def read_facts(self, groups, facts, limit=None, host_facts=None) -> RunResult:
        if host_facts:  # waiting for the workers it read before to exit
            assert limit == ["node1"] and "for p in 101 102;" in host_facts["node1"]["left"]
            self.events.append("drained")
            return RunResult(hosts={"node1": HostResult("node1", facts={"left": ""})},
                             dry_run=False)
        assert limit == ["control_plane"] and "pgrep -P" in facts["workers"]
        self.events.append("workers")
        return RunResult(hosts={"node1": HostResult("node1", facts={"workers": "101\n102\n"})},
                         dry_run=False)

    def deploy(self, site: SiteDir, limit=None, dry_run=False) -> RunResult:
        assert limit == rotation.HOST_GROUPS
        self.events.append("deploy")
        if self.fail_at == len(self.seen):
            self.fail_at = None
            raise KeyboardInterrupt
        folder = self.tmp / f"payload{len(self.seen)}"
        write_payload(folder, site, "node1")
        files = {f.path: f.content.decode() for f in site.files("node1")}
        creds = {path.rsplit("/", 1)[1]: text.strip() for path, text in files.items()
                 if path.startswith("/etc/cmdop/credentials/")}
        # the #<sha256> passwords each Redis user accepts, and what ACL LOAD logs in with
        acl = {line.split()[1]: sorted(w[1:] for w in line.split() if w.startswith("#"))
               for line in files["/etc/redis/users.acl"].splitlines()}
        creds["acl_load_auth"] = files["/etc/redis/cmdop-acl-load.auth"].splitlines()[2]
        pg = json.loads((folder / "postgres.json").read_text())
        logins = sorted(p["name"] for p in pg["passwords"]
                        if p["verifier_md5"] and p["name"] in ("cmdop_blue", "cmdop_green"))
        self.seen.append({**creds, "logins": logins, "acl": acl})
        return RunResult(hosts={"node1": HostResult("node1")}, dry_run=False)

    @property
    def now(self) -> dict:
        return self.seen[-1]


@pytest.fixture
def site_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    return make_site(tmp_path / "site")


@pytest.fixture
def hosts(tmp_path, monkeypatch) -> Hosts:
    fake = Hosts(tmp_path)
    monkeypatch.setattr(rotation, "deploy_site", fake.deploy)
    monkeypatch.setattr(rotation, "read_facts", fake.read_facts)
    return fake


def _run(site_dir: Path, action="rotate", names=("django_secret_key", "postgres_password_blue")):
    return rotation_step(site_dir, action, tuple(names))


def _state(site_dir: Path) -> dict:
    path = site_dir / "rotation.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())


def test_rotate_then_finish_switches_key_and_login_and_destroys_the_old_ones(site_dir, hosts):
    old = SecretStore.open(site_dir, "").values()
    _run(site_dir)
    new = SecretStore.open(site_dir, "").values()
    record = _state(site_dir)["rotation"]
    assert [p for p, _ in record["history"]] == ["staged", "admitted", "switched"]
    assert (record["phase"], record["done"]) == ("switched", True)
    # admitted: both logins can log in, the app still uses blue and the old key
    assert hosts.seen[0]["logins"] == ["cmdop_blue", "cmdop_green"]
    assert hosts.seen[0]["secret_key"] == old["django_secret_key"]
    assert hosts.seen[0]["db_password"] == old["postgres_password_blue"]
    # switched: new key signs, the old one verifies; the app logs in as green, blue still works
    assert new["django_secret_key"] != old["django_secret_key"]
    assert hosts.now["secret_key"] == new["django_secret_key"]
    assert hosts.now["secret_key_fallbacks"] == old["django_secret_key"]
    assert hosts.now["db_password"] == new["postgres_password_green"]
    assert new["postgres_password_green"] != old["postgres_password_green"]
    assert hosts.now["logins"] == ["cmdop_blue", "cmdop_green"]
    assert SiteDir.load(site_dir).config["postgres"]["active_role"] == "green"

    _run(site_dir, "finish")
    assert _state(site_dir) == {"active_role": "green", "rotation": None}
    assert hosts.now["secret_key_fallbacks"] == ""
    assert hosts.now["logins"] == ["cmdop_green"]  # blue's password is NULL
    assert "django_secret_key:previous" not in SecretStore.open(site_dir, "").values()
    # a second rotation goes back to blue, with a fresh password
    _run(site_dir, names=("postgres_password_green",))
    assert hosts.now["db_password"] not in (old["postgres_password_blue"],
                                            new["postgres_password_green"])
    assert SiteDir.load(site_dir).config["postgres"]["active_role"] == "blue"


@pytest.mark.parametrize("cut", [0, 1])
def test_an_interrupted_rotation_resumes_with_the_same_new_values(site_dir, hosts, cut):
    hosts.fail_at = cut  # Ctrl-C inside the admitted (0) or switched (1) deploy
    with pytest.raises(KeyboardInterrupt):
        _run(site_dir)
    record = _state(site_dir)["rotation"]
    assert (record["phase"], record["done"]) == (("admitted", "switched")[cut], False)
    staged = SecretStore.open(site_dir, "")._entries["django_secret_key"]
    pending = staged.get("next", staged)["value"]
    _run(site_dir, names=())  # a rerun without names resumes
    assert hosts.now["secret_key"] == pending
    assert _state(site_dir)["rotation"]["done"] is True


@pytest.mark.parametrize("boundary", ["staged", "admitted"])
def test_a_rotation_interrupted_between_phases_resumes_at_the_next(site_dir, hosts, boundary):
    def interrupt_after(line: str) -> None:
        if line.startswith(f"phase {boundary}: done"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Rotation(SiteDir.load(site_dir), interrupt_after).start_or_resume(
            resolve(("django_secret_key", "postgres_password_blue"), False))
    record = _state(site_dir)["rotation"]
    assert (record["phase"], record["done"]) == (boundary, True)
    deploys = len(hosts.seen)
    lines = _run(site_dir, names=())
    assert [line.split(":")[0] for line in lines[:-1]] == [
        f"phase {p}" for p in ("admitted", "switched") if p != boundary]
    assert len(hosts.seen) == deploys + len(lines) - 1  # each remaining phase deployed once


@pytest.mark.parametrize("cut", [None, 0, 1])
def test_rollback_from_any_phase_returns_to_the_old_values(site_dir, hosts, cut):
    old = SecretStore.open(site_dir, "").values()
    hosts.fail_at = cut
    try:
        _run(site_dir)
    except KeyboardInterrupt:
        pass
    staged = SecretStore.open(site_dir, "")._entries["django_secret_key"]
    new_key = staged.get("next", staged)["value"]
    _run(site_dir, "rollback")
    assert _state(site_dir)["rotation"] is None
    assert SiteDir.load(site_dir).config["postgres"]["active_role"] == "blue"
    assert hosts.now["secret_key"] == old["django_secret_key"]
    # a key that signed (the switch began) keeps verifying: nobody it signed in is signed out
    assert hosts.now["secret_key_fallbacks"] == ("" if cut == 0 else new_key)
    assert hosts.now["db_password"] == old["postgres_password_blue"]
    assert hosts.now["logins"] == ["cmdop_blue"]
    assert SecretStore.open(site_dir, "").values()["django_secret_key"] == old["django_secret_key"]


def test_a_rolled_back_key_verifies_until_the_next_rotation_finishes(site_dir, hosts):
    _run(site_dir)
    abandoned = SecretStore.open(site_dir, "").values()["django_secret_key"]
    _run(site_dir, "rollback")
    current = SecretStore.open(site_dir, "").values()["django_secret_key"]
    assert hosts.now["secret_key_fallbacks"] == abandoned
    _run(site_dir, names=("django_secret_key",))
    assert hosts.now["secret_key_fallbacks"] == current  # the replaced key, not the abandoned
    _run(site_dir, "finish")
    assert hosts.now["secret_key_fallbacks"] == ""
    assert "django_secret_key:previous" not in SecretStore.open(site_dir, "").values()


def test_rollback_after_finish_and_finish_without_rotation_are_one_line_refusals(site_dir, hosts):
    with pytest.raises(UserError, match="no rotation in progress"):
        _run(site_dir, "finish")
    hosts.fail_at = 1
    with pytest.raises(KeyboardInterrupt):
        _run(site_dir)
    with pytest.raises(UserError, match=r"has not switched yet \(phase switched\)"):
        _run(site_dir, "finish")  # no grace period skipped by accident
    _run(site_dir, names=())
    hosts.fail_at = len(hosts.seen)
    with pytest.raises(KeyboardInterrupt):
        _run(site_dir, "finish")  # cut inside retired: the old values may be gone already
    with pytest.raises(UserError, match="already destroyed"):
        _run(site_dir, "rollback")
    with pytest.raises(UserError, match="a rotation of .* is in progress"):
        _run(site_dir, names=("agent_join_key",))
    _run(site_dir, "finish")
    assert _state(site_dir)["rotation"] is None


def test_an_unreachable_host_stops_the_phase_in_one_line_and_a_rerun_resumes(site_dir, hosts,
                                                                            monkeypatch):
    def unreachable(site, limit=None, dry_run=False):
        raise UserError("nothing was changed: node1 (127.0.0.1): could not connect")

    monkeypatch.setattr(rotation, "deploy_site", unreachable)
    with pytest.raises(UserError) as refused:
        _run(site_dir)
    assert refused.value.message.startswith(
        "rotation stopped in phase admitted: nothing was changed: node1 (127.0.0.1): could not")
    assert "rerun `cmdop-install rotate" in refused.value.message
    monkeypatch.setattr(rotation, "deploy_site", hosts.deploy)
    _run(site_dir, names=())
    assert _state(site_dir)["rotation"]["phase"] == "switched"


def test_dry_run_lists_phases_and_hosts_and_changes_nothing(site_dir, hosts):
    before = (site_dir / "secrets.enc").read_bytes()
    lines: list[str] = []
    Rotation(SiteDir.load(site_dir), lines.append, dry_run=True).start_or_resume(
        resolve((), True))
    assert [line.split(":")[0] for line in lines] == [
        "would enter phase staged", "would enter phase admitted", "would enter phase switched"]
    assert lines[1].endswith("[node1]")
    assert hosts.seen == []
    assert (site_dir / "secrets.enc").read_bytes() == before
    assert not (site_dir / "rotation.json").exists()


def test_cli_refuses_bad_names_and_a_held_site_lock_in_one_line(site_dir, hosts, capsys):
    assert main(["rotate", str(site_dir), "no_such_secret", "--yes"]) == 1
    assert main(["rotate", str(site_dir), "owner_password", "--yes"]) == 1
    assert main(["rotate", str(site_dir), "--all", "--finish", "--yes"]) == 2
    with open(site_dir / ".rollout.lock", "w") as held:  # a deploy holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["rotate", str(site_dir), "--all", "--yes"]) == 1
        assert main(["deploy", str(site_dir)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("cmdop-install: error: unknown secret 'no_such_secret' "
                      "(`cmdop-install secrets list` names them)")
    assert err[1].startswith("cmdop-install: error: secret owner_password: not rotated by the "
                             "installer")
    assert "one of them" in err[2]
    assert "another deploy, rollout or rotate of this site is running" in err[3]
    assert "another deploy, rollout or rotate" in err[4]
    assert len(err) == 5
    assert hosts.seen == []
    assert not (site_dir / "rotation.json").exists()


def test_secrets_list_says_which_secrets_rotate_and_why_not(site_dir, capsys):
    assert main(["secrets", "list", str(site_dir)]) == 0
    out = capsys.readouterr().out.splitlines()[1:]
    rows = {line.split()[0]: line for line in out}
    assert rows["django_secret_key"].endswith("yes (cmdop-install rotate)")
    assert rows["redis_password_app"].endswith("yes (cmdop-install rotate)")
    assert "not rotated by the installer" in rows["owner_password"]
    assert "not rotatable yet" in rows["totp_key"]  # the TOTP secrets sealed with it
    pki = [line for line in out if line.startswith("pki: ")]
    assert "yes, as pki_leaves" in pki[0] + pki[1] and "yes, as pki_ca" in pki[0] + pki[1]
    assert all("yes" in line or "not rotat" in line for line in rows.values())


def test_check_warns_about_secrets_older_than_max_age(site_dir):
    store = SecretStore.open(site_dir, "")
    store._entries["django_secret_key"]["created"] = "2020-01-01T00:00:00Z"
    store._entries["owner_password"]["created"] = "2020-01-01T00:00:00Z"
    store._dirty = True
    store.save()
    findings = secret_age_findings(SiteDir.load(site_dir))
    assert len(findings) == 1  # owner_password is not the installer's to rotate
    assert findings[0].startswith("warning: secrets.enc: django_secret_key is ")
    assert "[rotation] max_age_days = 90" in findings[0]


def test_max_age_days_is_validated_like_the_other_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CMDOP_INSTALL_KEY", TEST_KEY)
    site_dir = tmp_path / "site"
    write_site(site_dir, {"rotation.max_age_days": 0})
    assert main(["check", str(site_dir)]) == 2
    err = capsys.readouterr().err
    assert ": rotation.max_age_days: must be between 1 and 3650 (default is 90)" in err
    assert len(err.splitlines()) == 1


def test_status_shows_a_rotation_in_progress_and_secret_ages(site_dir, hosts, monkeypatch,
                                                             capsys):
    from cmdop_install import status

    def without_hosts(site):  # the hosts' part of status needs SSH; the rest is the site's
        return {"site": site.name, "last_deploy": None, "hosts": [],
                "rotation": status.rotation_state.load(site.path)["rotation"],
                "secrets": [{"name": r["name"], "age": r["age"]} for r in site.store.listing()],
                "ca": status.pki.ca_dates(site.path), "warnings": []}

    monkeypatch.setattr(status, "site_status", without_hosts)
    hosts.fail_at = 1
    with pytest.raises(KeyboardInterrupt):
        _run(site_dir)
    assert main(["status", str(site_dir)]) == 0
    out = capsys.readouterr().out
    assert ("rotation of django_secret_key, postgres_password: phase switched in progress"
            in out)
    assert "secret ages: django_secret_key 0d, " in out
    assert "site CA: issued " in out and "(0 days ago), expires " in out


def _sha(value: str) -> str:
    return redis_acl_hash(value)


def test_a_redis_password_is_admitted_beside_the_old_before_the_app_uses_it(site_dir, hosts):
    old = SecretStore.open(site_dir, "").values()["redis_password_app"]
    _run(site_dir, names=("redis_password_app",))
    new = SecretStore.open(site_dir, "").values()["redis_password_app"]
    assert new != old
    admitted, switched = hosts.seen
    # admitted: users.acl lists both, the control plane still logs in with the old one
    assert admitted["acl"]["testsite-app"] == sorted([_sha(old), _sha(new)])
    assert admitted["redis_password"] == old
    # switched: the control plane's credential is the new one; users.acl unchanged (no
    # ACL LOAD at the switch), the old one still logs in for workers still finishing
    assert switched["redis_password"] == new
    assert switched["acl"] == admitted["acl"]
    _run(site_dir, "finish")
    assert hosts.now["acl"]["testsite-app"] == [_sha(new)]
    assert hosts.now["redis_password"] == new
    assert "redis_password_app:previous" not in SecretStore.open(site_dir, "").values()
    # the other users are not touched
    assert hosts.now["acl"]["testsite-acl-load"] == admitted["acl"]["testsite-acl-load"]


@pytest.mark.parametrize("cut", [None, 0, 1])
def test_a_redis_rollback_keeps_both_passwords_until_the_app_is_back_on_the_old(
        site_dir, hosts, cut):
    old = SecretStore.open(site_dir, "").values()["redis_password_app"]
    hosts.fail_at = cut  # Ctrl-C inside the admitted (0) or switched (1) deploy
    try:
        _run(site_dir, names=("redis_password_app",))
    except KeyboardInterrupt:
        pass
    deploys, events = len(hosts.seen), len(hosts.events)
    _run(site_dir, "rollback")
    back = hosts.seen[deploys:]
    if cut != 0:  # from switched: the app goes back to the old one while both still log in
        assert back[0]["redis_password"] == old
        assert len(back[0]["acl"]["testsite-app"]) == 2
        # and the new one is removed only once the workers that used it have exited
        assert hosts.events[events:] == ["workers", "deploy", "drained", "deploy"]
    else:  # nothing was reloaded: nothing to wait for
        assert hosts.events[events:] == ["deploy"]
    # then the new one is removed: only the old one logs in
    assert back[-1]["redis_password"] == old
    assert back[-1]["acl"]["testsite-app"] == [_sha(old)]
    assert _state(site_dir)["rotation"] is None
    store = SecretStore.open(site_dir, "")
    assert store.values() == store.values(("redis_password_app",))  # nothing staged is left
    assert store.values()["redis_password_app"] == old


def test_the_acl_load_user_logs_in_with_a_password_redis_accepts_at_every_phase(site_dir,
                                                                               hosts):
    # Redis accepts what the last ACL LOAD (or the start) loaded; each deploy's ACL LOAD
    # logs in with the auth file that deploy wrote, before the new users.acl is loaded
    accepted = [_sha(SecretStore.open(site_dir, "").values()["redis_password_admin"])]
    _run(site_dir, names=("redis_password_admin",))
    _run(site_dir, "finish")
    _run(site_dir, names=("redis_password_admin",))
    _run(site_dir, "rollback")
    assert len(hosts.seen) == 7  # admitted, switched, retired; admitted, switched; 2 back
    for seen in hosts.seen:
        assert _sha(seen["acl_load_auth"]) in accepted
        accepted = seen["acl"]["testsite-acl-load"]
    assert accepted == [_sha(SecretStore.open(site_dir, "").values()["redis_password_admin"])]
