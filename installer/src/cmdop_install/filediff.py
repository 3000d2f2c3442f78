"""Which rendered files a deploy changes on a host, and how (a unified diff when not secret).

One remote command per host (read as root before the run plans anything) prints, for each
rendered file that exists there, its kind, SHA-256, mode, owner and group, plus, for a
file that is not secret and whose content differs from the rendered one, that content in
base64. A secret file is only ever compared by its hash: its content never leaves the host
and never appears in a diff, like ``diff: false`` in Ansible or pyinfra's ``--diff``, which
we follow for the rest (``--- on the host``, ``+++ rendered``).
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import shlex
from dataclasses import dataclass

from cmdop_install.render import RenderedFile

# $1 path, $2 its index in the host's rendered files, $3 the rendered SHA-256, or "-" for a
# secret file (never sent back). Lines: "<i> file <sha256> <mode> <user> <group>",
# "<i> text <base64>" (a non-secret file whose content differs), "<i> other" (a link, a
# folder...). A missing file prints nothing.
PROBE = (
    'probe() { if [ -L "$1" ] || { [ -e "$1" ] && [ ! -f "$1" ]; }; then echo "$2 other"; '
    'elif [ -f "$1" ]; then s=$(sha256sum < "$1" | cut -c1-64); '
    """printf '%s file %s %s\\n' "$2" "$s" "$(stat -c '%a %U %G' "$1")"; """
    'if [ "$3" != - ] && [ "$3" != "$s" ]; then printf \'%s text \' "$2"; '
    'base64 -w0 < "$1"; echo; fi; fi; }'
)


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # "new", "content", "owner/mode" or "not a regular file"
    secret: bool
    diff: str = ""  # unified diff of the content (never for a secret file)

    def as_json(self) -> dict:
        return {"path": self.path, "change": self.change, "secret": self.secret,
                "diff": self.diff or None}

    def lines(self, verb: str, with_diff: bool) -> list[str]:
        """The change as the deploy prints it: the file, then (``with_diff``) its diff."""
        if self.secret:
            return [f"file {self.path}: {verb} ({self.change}; secret, content not shown)"]
        head = [f"file {self.path}: {verb} ({self.change})"]
        return head + (self.diff.splitlines() if with_diff else [])


def probe_command(files: list[RenderedFile]) -> str:
    """The one command that reads the state of ``files`` on their host (run as root)."""
    calls = [
        f"probe {shlex.quote(f.path)} {i} "
        f"{'-' if f.secret else hashlib.sha256(f.content).hexdigest()}"
        for i, f in enumerate(files)
    ]
    return "; ".join([PROBE, *calls, "true"])


def changes(host: str, files: list[RenderedFile], output: str) -> list[FileChange]:
    """What the deploy changes among ``files``, from ``probe_command``'s ``output`` on
    ``host`` (in the order of ``files``)."""
    state: dict[int, list[str]] = {}
    text: dict[int, bytes] = {}
    for line in output.splitlines():
        index, kind, *rest = line.split(" ", 2)
        if kind == "text":
            text[int(index)] = base64.b64decode(rest[0] if rest else "")
        else:
            state[int(index)] = [kind, *(rest[0].split() if rest else [])]
    found = []
    for i, f in enumerate(files):
        have = state.get(i)
        if have is None:
            found.append(_change(host, f, "new", b""))
        elif have[0] != "file":
            found.append(FileChange(f.path, "not a regular file", f.secret))
        elif have[1] != hashlib.sha256(f.content).hexdigest():
            found.append(_change(host, f, "content", text.get(i, b"")))
        elif (have[2], have[3], have[4]) != (f"{f.mode:o}", f.owner, f.group):
            found.append(FileChange(
                f.path, f"owner/mode {have[3]}:{have[4]} {have[2]} -> "
                f"{f.owner}:{f.group} {f.mode:o}", f.secret))
    return found


def _change(host: str, f: RenderedFile, change: str, current: bytes) -> FileChange:
    if f.secret:
        return FileChange(f.path, change, True)
    old = current.decode(errors="replace").splitlines(keepends=True)
    new = f.content.decode(errors="replace").splitlines(keepends=True)
    origin = "/dev/null" if change == "new" else f"{host}:{f.path}"
    diff = difflib.unified_diff(old, new, fromfile=origin, tofile=f"rendered {f.path}")
    return FileChange(f.path, change, False, "".join(_ending(line) for line in diff))


def _ending(line: str) -> str:
    """A diff line that ends the file without a newline says so, as ``diff -u`` does."""
    return line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
