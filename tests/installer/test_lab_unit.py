"""The lab's pieces that need no host: argument errors, addressing, the files it writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cmdop_install import cli as cli_module
from cmdop_install.lab import core, image, paths

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def lab_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CMDOP_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CMDOP_LAB_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """The real entry point (`cmdop_install.cli.main`), its exit code and its stderr."""

    def invoke(*args: str) -> tuple[int, str]:
        rc = cli_module.main(list(args))
        return rc, capsys.readouterr().err

    return invoke


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hosts", "0"], "--hosts 0: must be between 1 and 50"),
        (["--hosts", "500"], "--hosts 500: must be between 1 and 50"),
        (["--name", "Bad_Name"], "--name 'Bad_Name': use 1-20 lowercase letters"),
        (["--airgapped", "host2"], "hostN names are taken"),
        (["--airgapped", "a1", "--airgapped", "a1"], "--airgapped 'a1' is given twice"),
    ],
)
def test_bad_lab_up_arguments_are_one_line_and_make_nothing(args, message, lab_home, run) -> None:
    rc, err = run("lab", "up", *args)
    assert rc == 1
    assert err.count("\n") == 1 and message in err
    assert not (lab_home / "home").exists(), "nothing may be made for a bad request"


def test_lab_up_without_root_refuses_before_making_anything(monkeypatch, lab_home, run) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    rc, err = run("lab", "up", "--hosts", "2")
    assert rc == 1
    assert err.strip() == (
        "cmdop-install: error: the lab needs root (podman networks, routes and firewall rules); "
        "run it as root or with sudo"
    )
    assert not (lab_home / "home").exists()


def test_ssh_to_a_lab_that_does_not_exist(run) -> None:
    rc, err = run("lab", "ssh", "--name", "nolab", "host1")
    assert rc == 1
    assert "there is no lab 'nolab'" in err


def test_non_numeric_hosts_is_a_usage_error(run) -> None:
    rc, err = run("lab", "up", "--hosts", "many")
    assert rc == 2
    assert "'many' is not a valid integer" in err


def _state(name: str = "t") -> core.LabState:
    state = core._new_state(name)
    state.hosts = core.wanted_hosts(state, 2, ("air1",))
    return state


def test_addresses_are_inside_the_blackholed_supernet() -> None:
    state = _state()
    assert [(h.name, h.ip, h.airgapped) for h in state.hosts] == [
        ("host1", "10.89.10.11", False),
        ("host2", "10.89.10.12", False),
        ("air1", "10.89.11.11", True),
    ]
    assert state.subnet.startswith("10.89.") and paths.SUPERNET == "10.89.0.0/16"


def test_a_second_lab_gets_its_own_subnets(lab_home) -> None:
    first = _state("one")
    first.dir.mkdir(parents=True)
    first.save()
    second = _state("two")
    assert second.subnet != first.subnet and second.air_subnet != first.air_subnet


def pyinfra_reads(path: Path) -> dict[str, list[tuple[str, dict]]]:
    """Groups and host data as pyinfra's own CLI loads an inventory file (in a child
    process: pyinfra_cli monkey-patches the interpreter with gevent)."""
    code = (
        "import json, sys\n"
        "from pyinfra.api import State\n"
        "from pyinfra.context import ctx_state\n"
        "from pyinfra_cli.inventory import _get_groups_from_filename\n"
        "with ctx_state.use(State()):\n"
        "    groups = _get_groups_from_filename(sys.argv[1])\n"
        "print(json.dumps({g: [list(h) for h in hosts] for g, hosts in groups.items()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return {g: [(n, d) for n, d in hosts] for g, hosts in json.loads(out.stdout).items()}


def test_lab_inventory_file_is_what_pyinfra_reads(lab_home) -> None:
    state = _state()
    f = lab_home / "inventory.py"
    f.write_text(core.inventory_text(state))
    groups = pyinfra_reads(f)
    assert sorted(groups) == ["airgapped", "lab"]
    assert [n for n, _ in groups["lab"]] == ["host1", "host2"]
    assert [n for n, _ in groups["airgapped"]] == ["air1"]
    data = dict(groups["lab"])["host1"]
    expected = dict(core.inventory_groups(state)["lab"])["host1"]
    assert {k: data[k] for k in expected} == expected
    assert data["ssh_strict_host_key_checking"] == "yes"


def test_site_inventory_over_a_lab_is_what_pyinfra_reads(lab_home) -> None:
    state = _state()
    f = lab_home / "inventory.py"
    f.write_text(core.site_inventory_text(state, "host1", ["host2"]))
    groups = pyinfra_reads(f)
    assert {g: [n for n, _ in hs] for g, hs in groups.items()} == {
        "postgres": ["host1"],
        "redis": ["host1"],
        "centrifugo": [],
        "control_plane": ["host1"],
        "agents": ["host2"],
    }


def test_ssh_config_pins_host_keys_and_the_lab_key() -> None:
    text = core.ssh_config_text(_state())
    block = text.split("Host host1\n")[1].split("\n\n")[0]
    assert "HostName 10.89.10.11" in block
    assert "StrictHostKeyChecking yes" in block
    assert "IdentitiesOnly yes" in block


def test_state_round_trips(lab_home) -> None:
    state = _state()
    state.dir.mkdir(parents=True)
    state.save()
    loaded = core.LabState.load("t")
    assert loaded == state
    assert json.loads((state.dir / "state.json").read_text())["name"] == "t"
    assert oct((state.dir / "state.json").stat().st_mode & 0o777) == "0o600"


def test_unknown_host_lists_the_known_ones() -> None:
    with pytest.raises(Exception, match=r"has no host 'x' \(hosts: host1, host2, air1\)"):
        _state().host("x")


def test_mirror_is_read_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n"
    )
    stanzas = image._deb822_stanzas(tmp_path)
    assert stanzas[0]["uris"] == "http://mirror.example/debian"
    assert stanzas[1]["suites"] == "bookworm-security"


def test_a_host_this_machine_cannot_route_to_fails_at_once_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a fresh machine on podman's CNI backend showed: the --internal network's bridge
    had no address, so the blackhole route answered for air1 — say so before any wait."""
    from cmdop_install.errors import UserError
    from cmdop_install.lab import network, system

    state = core.LabState("t", 0, "10.89.10.0/24", "10.89.11.0/24")
    state.hosts = core.wanted_hosts(state, 1, ("air1",))
    monkeypatch.setattr(network, "bridge_of", lambda net: {"t-net": "podman1"}.get(net, ""))
    monkeypatch.setattr(
        network, "route_device", lambda ip: "podman1" if ip == "10.89.10.11" else None
    )
    monkeypatch.setattr(
        system, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 0, "cni\n", "")
    )
    with pytest.raises(UserError) as caught:
        core._check_routes(state)
    message = caught.value.message
    assert "\n" not in message
    assert message == (
        "lab t: this machine cannot reach air1 (10.89.11.11): its route goes nowhere instead "
        "of bridge (none) of t-air (podman network backend: cni; the lab needs netavark)"
    )


def test_the_lab_pins_podmans_netavark_backend() -> None:
    from cmdop_install.lab import system

    system.write_containers_conf()
    text = paths.containers_conf().read_text()
    assert '[network]\nnetwork_backend = "netavark"\n' in text
    assert "netavark" in system.DEBIAN_PACKAGES.values()


@pytest.mark.parametrize(
    ("lab_up", "networks", "removed"),
    [
        (True, [], []),  # a live lab still needs it
        (False, ["cmdop-molecule-default"], []),  # a network in the range made outside a lab
        (False, [], ["blackhole route"]),  # nothing uses the range any more
    ],
)
def test_the_safety_route_goes_only_when_nothing_uses_the_range(
    monkeypatch: pytest.MonkeyPatch, lab_home, lab_up, networks, removed
) -> None:
    from cmdop_install.lab import network

    if lab_up:
        other = _state("other")
        other.dir.mkdir(parents=True)
        other.save()
    route = ["blackhole 10.89.0.0/16"]
    monkeypatch.setattr(network, "networks_in_supernet", lambda: networks)
    monkeypatch.setattr(network, "blackhole_present", lambda: bool(route))
    monkeypatch.setattr(network, "remove_blackhole", route.clear)
    assert core.release_safety_route() == removed
    assert route == ([] if removed else ["blackhole 10.89.0.0/16"])
