"""Our deploy operations, facts in and commands out, without a host (pyinfra's own pattern:
tests/operations/<module>.<op>/<case>.json run against a fake host).

Each ``ops/<operation>/<case>.json`` holds:

- ``kwargs``: the operation's arguments; ``{"returns": X}`` stands for a callable that
  returns X (``force=``, ``files_changed=``: what earlier operations did);
- ``facts``: fact class -> its arguments (space-joined) -> the output lines the host
  prints; the fact's own ``process`` turns them into its typed value, no lines is its
  default. A fact the operation asks for that the case does not give fails the case;
- ``local_files``: files on the operator's machine (relative paths, written to a scratch
  folder the case runs in);
- ``commands``: what the operation yields (an upload is ``["upload", src, dest]``), and
  ``noop_description`` when it yields nothing; or ``exception``: ``{"name", "message"}``.
"""

import json
from pathlib import Path

import pytest
from cmdop_install.deploys import ops
from pyinfra.api import FileUploadCommand
from pyinfra.context import ctx_host

pytestmark = pytest.mark.unit

CASES = Path(__file__).parent / "ops"
OPERATIONS = sorted(name for name in dir(ops) if hasattr(getattr(ops, name), "_inner"))


class FakeHost:
    """What an operation sees of a host: the case's facts, and its no-op note."""

    def __init__(self, facts: dict[str, dict[str, list[str]]]) -> None:
        self.facts = facts
        self.noop_description: str | None = None

    def get_fact(self, cls, *args, **kwargs):
        key = " ".join(" ".join(a) if isinstance(a, list) else str(a) for a in args)
        try:
            output = self.facts[cls.__name__][key]
        except KeyError:
            raise AssertionError(f"the case gives no {cls.__name__} for {key!r}") from None
        return cls().process(output) if output else cls.default()

    def noop(self, description: str) -> None:
        self.noop_description = description

    def get_temp_filename(self, dest: str, temp_directory: str) -> str:
        return f"{temp_directory}/upload-of-{Path(dest).name}"


def as_argument(value):
    if isinstance(value, dict) and set(value) == {"returns"}:
        return lambda: value["returns"]
    return value


def as_json(command):
    if isinstance(command, FileUploadCommand):
        return ["upload", str(command.src), str(command.dest)]
    return str(command)


@pytest.mark.parametrize(
    "case", sorted(CASES.glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.stem}"
)
def test_operation_case(case: Path, tmp_path, monkeypatch) -> None:
    data = json.loads(case.read_text())
    for name, content in data.get("local_files", {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    monkeypatch.chdir(tmp_path)
    host = FakeHost(data.get("facts", {}))
    kwargs = {k: as_argument(v) for k, v in data["kwargs"].items()}
    operation = getattr(ops, case.parent.name)._inner
    with ctx_host.use(host):
        if "exception" in data:
            with pytest.raises(Exception) as raised:
                list(operation(**kwargs))
            assert type(raised.value).__name__ == data["exception"]["name"]
            assert str(raised.value) == data["exception"]["message"]
            return
        commands = [as_json(c) for c in operation(**kwargs)]
    assert commands == data["commands"]
    assert host.noop_description == data.get("noop_description")


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_has_a_case_that_changes_and_one_that_does_not(operation) -> None:
    cases = [json.loads(p.read_text()) for p in (CASES / operation).glob("*.json")]
    assert any(c.get("commands") for c in cases), f"{operation}: no case that changes the host"
    assert any(c.get("commands") == [] for c in cases), f"{operation}: no no-op case"
