"""Input validation policy for work arriving from the control plane.

PTY input (keystrokes from an operator's browser) is sanitised, not rejected:

* at most ``INPUT_MAX`` bytes per ``session.input`` item;
* kept: printable text, valid UTF-8, every C0 control (Ctrl-C, Ctrl-D, ESC … are real keys),
  DEL, and the key sequences a keyboard sends — ``ESC [ <digits;> A|B|C|D|F|H|P|Q|S|Z|~``,
  ``ESC O <letter>`` and ``ESC <printable>`` (Alt+key);
* dropped: anything that looks like a **terminal reply** rather than a keystroke, because a
  reply injected into a shell's input runs as if typed: cursor position reports
  (``CSI r;c R``), device attribute replies (``CSI ? … c``, ``CSI > … c``), mode reports
  (``CSI … $ y``), every *terminated* OSC/DCS/APC/PM/SOS string (title, DECRQSS and colour
  replies end in BEL or ST), mouse and focus reports (``CSI M…``, ``CSI < … M/m``, ``CSI I``,
  ``CSI O``), and bracketed-paste markers ``CSI 200~``/``CSI 201~`` (a paste containing
  ``201~`` would end paste mode early and run the rest), 8-bit and UTF-8 C1 controls, invalid
  UTF-8. A lone ``ESC X``/``ESC ]``/``ESC P`` is Alt+X/Alt+]/Alt+P (emacs ``M-x``) and is kept.
  Removal repeats until nothing changes, so a reply cannot be assembled out of the pieces
  left around a removed one. Terminals send a reply in one write, so one ``session.input``
  item carries it whole; a reply split across items is not recognised (the control plane's
  client should not split them).
* Known casualty: ``CSI 1;2R`` (Shift+F3 in some terminals) is indistinguishable from a
  cursor position report and is dropped.

Commands and paths are validated and refused with a clear ``WorkError``: no NUL bytes,
commands up to ``COMMAND_MAX`` bytes, paths absolute, up to ``PATH_MAX`` bytes with components
up to ``NAME_MAX`` bytes. Paths are not confined to a directory: the agent acts with its user's
permissions, exactly as that user's shell would, and the control plane decides who may ask.
"""

from __future__ import annotations

import re

from .errors import WorkError

INPUT_MAX = 4096
COMMAND_MAX = 8192
PATH_MAX = 4096
NAME_MAX = 255
TERM_SIZE_MAX = 1000

_KEY_CSI = re.compile(rb"\x1b\[([0-9;]{0,16})([ABCDFHPQSZ~])")
# One pass finds, left to right, either a terminated string or a CSI (complete, or cut off).
REPLY_OR_CSI = re.compile(
    rb"(?P<string>\x1b[\]P_^X][^\x07\x1b]*(?:\x07|\x1b\\))"
    rb"|(?P<csi>\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?)"
)


def is_key_sequence(seq: bytes) -> bool:
    key = _KEY_CSI.fullmatch(seq)
    if key is None:
        return False
    params, final = key.groups()
    return not (final == b"~" and params.split(b";")[0] in (b"200", b"201"))


def _keep(match: re.Match[bytes]) -> bytes:
    seq = match.group(0)
    return seq if match.group("csi") and is_key_sequence(seq) else b""


def sanitize_input(data: bytes) -> bytes:
    """Return the keystrokes of ``data`` with anything reply-like removed (policy above)."""
    if len(data) > INPUT_MAX:
        raise WorkError("input_too_long", f"input is {len(data)} bytes, the limit is {INPUT_MAX}")
    # C1 and invalid UTF-8 first: what remains is valid UTF-8, and removing whole ASCII
    # sequences from it below cannot create a C1 control again.
    text = data.decode("utf-8", errors="replace")
    data = "".join(c for c in text if not 0x80 <= ord(c) <= 0x9F and c != "\ufffd").encode()
    while True:
        cleaned = REPLY_OR_CSI.sub(_keep, data)
        if cleaned == data:
            return data
        data = cleaned


def validate_command(command: object) -> str:
    if not isinstance(command, str) or not command.strip():
        raise WorkError("bad_command", "command must be a non-empty string")
    if "\x00" in command:
        raise WorkError("bad_command", "command contains a NUL byte")
    size = len(command.encode())
    if size > COMMAND_MAX:
        raise WorkError("bad_command", f"command is {size} bytes, the limit is {COMMAND_MAX}")
    return command


def validate_path(path: object) -> str:
    if not isinstance(path, str) or not path:
        raise WorkError("bad_path", "path must be a non-empty string")
    if "\x00" in path:
        raise WorkError("bad_path", "path contains a NUL byte")
    if not path.startswith("/"):
        raise WorkError("bad_path", f"path must be absolute: {path[:80]!r}")
    raw = path.encode("utf-8", errors="surrogateescape")
    if len(raw) > PATH_MAX:
        raise WorkError("bad_path", f"path is {len(raw)} bytes, the limit is {PATH_MAX}")
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        raise WorkError("bad_path", f"a path component is longer than {NAME_MAX} bytes")
    return path


def validate_size(cols: object, rows: object) -> tuple[int, int]:
    for value in (cols, rows):
        if not isinstance(value, int) or isinstance(value, bool):
            raise WorkError("bad_size", "cols and rows must be integers")
        if not 1 <= value <= TERM_SIZE_MAX:
            raise WorkError("bad_size", f"cols and rows must be between 1 and {TERM_SIZE_MAX}")
    return int(cols), int(rows)  # type: ignore[call-overload]

