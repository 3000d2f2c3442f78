"""Input validation policy: PTY input sanitising, commands, paths, sizes."""

import pytest
from cmdop_agent.errors import WorkError
from cmdop_agent.validate import (
    INPUT_MAX,
    REPLY_OR_CSI,
    is_key_sequence,
    sanitize_input,
    validate_command,
    validate_path,
    validate_size,
)
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

KEYSTROKES = [
    b"ls -la\r", b"\x03", b"\x04", b"\x1b", b"\x7f", b"\t",
    b"\x1b[A\x1b[B\x1b[C\x1b[D", b"\x1b[H\x1b[F", b"\x1bOA\x1bOP", b"\x1b[3~\x1b[5~\x1b[15~",
    b"\x1b[1;5C", b"\x1b[Z", b"\x1bb\x1bf", "h\u00e9llo \u20ac \U0001f600".encode(),
    b"\x1bx", b"\x1bX", b"\x1b]", b"\x1bP",  # Alt+x, Alt+X (emacs M-x), Alt+], Alt+P
]

REPLIES = {
    "cursor position report": b"\x1b[12;40R",
    "primary DA reply": b"\x1b[?62;1;6c",
    "secondary DA reply": b"\x1b[>41;330;0c",
    "mode report": b"\x1b[?2004;1$y",
    "title report": b"\x1b]lrm -rf ~\x1b\\",
    "OSC colour reply": b"\x1b]11;rgb:0000/0000/0000\x07",
    "DECRQSS reply": b"\x1bP1$r0m\x1b\\",
    "APC": b"\x1b_x\x1b\\",
    "SGR mouse report": b"\x1b[<0;10;5M\x1b[<0;10;5m",
    "focus in/out": b"\x1b[I\x1b[O",
    "bracketed paste end": b"\x1b[201~",
    "bracketed paste start": b"\x1b[200~",
    "8-bit C1": b"\x9b\x9d\x90",
    "UTF-8 C1": "\u009b".encode(),
}


@pytest.mark.parametrize("keys", KEYSTROKES)
def test_keystrokes_pass(keys: bytes) -> None:
    assert sanitize_input(keys) == keys


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_terminal_replies_are_dropped(name: str) -> None:
    assert sanitize_input(b"a" + REPLIES[name] + b"b") == b"ab"


def test_paste_cannot_escape_bracketed_paste() -> None:
    paste = b"\x1b[200~harmless\x1b[201~\rrm -rf ~\r\x1b[201~"
    assert b"\x1b[20" not in sanitize_input(paste)


def test_input_length_cap() -> None:
    assert sanitize_input(b"x" * INPUT_MAX) == b"x" * INPUT_MAX
    with pytest.raises(WorkError, match="input_too_long"):
        sanitize_input(b"x" * (INPUT_MAX + 1))


def test_replies_cannot_be_reassembled_from_pieces() -> None:
    # removing the inner CPR would leave a complete OSC reply behind, so removal repeats
    assert sanitize_input(b"\x1b\x1b[12;1R]0;x\x07") == b""
    assert sanitize_input(b"\x1b\xc2\x9b]0;x\x07") == b""


pieces = st.lists(st.one_of(
    st.binary(max_size=6),
    st.sampled_from([b"\x1b", b"\x1b[", b"\x1b]", b"\x1bP", b"\x07", b"\x1b\\", b"R", b"c",
                     b"12;1", b"?", b"200~", b"201~", b"\xc2\x9b", b"\x9b", b"~", b"M"]),
), max_size=40).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(pieces)
def test_sanitised_input_has_no_reply_and_no_c1(data: bytes) -> None:
    out = sanitize_input(data[:INPUT_MAX])
    text = out.decode()  # valid UTF-8
    assert not any(0x80 <= ord(c) <= 0x9F for c in text)
    for m in REPLY_OR_CSI.finditer(out):
        assert m.group("csi") and is_key_sequence(m.group(0)), m.group(0)
    assert sanitize_input(out) == out  # idempotent


@pytest.mark.parametrize("command,match", [
    ("", "non-empty"), ("   ", "non-empty"), (None, "non-empty"), ("echo \x00", "NUL"),
    ("x" * 8193, "limit is 8192"),
])
def test_bad_commands(command: object, match: str) -> None:
    with pytest.raises(WorkError, match=match):
        validate_command(command)


def test_good_command() -> None:
    assert validate_command("uname -a | tr a-z A-Z") == "uname -a | tr a-z A-Z"


@pytest.mark.parametrize("path,match", [
    ("", "non-empty"), ("etc/passwd", "absolute"), ("/etc/\x00", "NUL"),
    ("/" + "a/" * 2100, "limit is 4096"), ("/" + "n" * 256, "longer than 255"), (7, "non-empty"),
])
def test_bad_paths(path: object, match: str) -> None:
    with pytest.raises(WorkError, match=match):
        validate_path(path)


@pytest.mark.parametrize("cols,rows", [(0, 24), (80, 0), (1001, 24), ("80", 24), (True, 24)])
def test_bad_sizes(cols: object, rows: object) -> None:
    with pytest.raises(WorkError):
        validate_size(cols, rows)
