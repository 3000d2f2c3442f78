"""ANSI output filter: an allowlist state machine over PTY output bytes.

Policy (what reaches an operator's terminal):

* passed: printable ASCII, valid UTF-8 (except U+0080..U+009F, the C1 controls in UTF-8 form),
  the C0 controls TAB, LF, CR, BS;
* passed: ``CSI <params> m`` (SGR colours/attributes; params digits ``;`` ``:``), cursor moves
  ``CSI n A|B|C|D|E|F|G|H|f|d``, erases ``CSI n J|K``, and the DEC private modes 25 (cursor
  visible) and 1049 (alternate screen) with ``h``/``l``; ``ESC 7`` / ``ESC 8``;
* dropped: every OSC (titles, OSC 52 clipboard, OSC 8 links, OSC 50 fonts), DCS (DECRQSS, …),
  APC, PM, SOS — the whole string up to its terminator; every other CSI, in particular the ones
  that make a terminal answer (DSR ``CSI 6 n``, DA ``CSI c``/``CSI > c``, window reports
  ``CSI 21 t``, DECRQM ``CSI ? n $ p``), mouse and focus reporting and bracketed paste
  (``CSI ? 1000..1016/1004/2004 h``), every other ESC sequence (RIS, charsets, DECID), other C0
  controls (BEL, …), DEL, and every 8-bit C1 byte;
* invalid UTF-8 becomes U+FFFD.

Length caps: a CSI longer than ``CSI_MAX`` bytes is dropped whole; an OSC/DCS/APC/PM/SOS string
longer than ``STRING_MAX`` bytes stops being swallowed and the filter returns to text (the rest
appears as harmless text rather than the filter hiding output for ever).

The filter keeps its state across ``feed`` calls, so a sequence split across PTY reads is
handled exactly as if it had arrived in one read.
"""

from __future__ import annotations

import re

ESC = 0x1B
CSI_MAX = 64
STRING_MAX = 4096

_C0_ALLOWED = frozenset(b"\t\n\r\b")
_CSI_CURSOR_FINALS = frozenset(b"ABCDEFGHfdJK")
_DEC_MODES_ALLOWED = frozenset({b"25", b"1049"})
_STRING_INTRODUCERS = frozenset(b"]P_^X")
_ESC_ALLOWED = frozenset(b"78")
_REPLACEMENT = "\ufffd".encode()

# Fast path: a run of bytes the state machine would pass unchanged in the ground state
# (allowed C0, printable ASCII, well-formed UTF-8 other than the C1 range U+0080..U+009F).
_WHOLE_CSI = re.compile(rb"\x1b\[([\x20-\x3f]*)([\x40-\x7e])")
_ASCII_RUN = re.compile(rb"[\t\n\r\x08\x20-\x7e]+")
_SAFE_RUN = re.compile(
    rb"(?:[\t\n\r\x08\x20-\x7e]"
    rb"|\xc2[\xa0-\xbf]|[\xc3-\xdf][\x80-\xbf]"
    rb"|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})+"
)

(
    _GROUND,
    _ESCAPE,
    _ESC_INTERMEDIATE,
    _CSI,
    _CSI_IGNORE,
    _STRING,
    _STRING_ESC,
) = range(7)


def _csi_allowed(body: bytes, final: int) -> bool:
    """body: parameter and intermediate bytes between ``CSI`` and the final byte."""
    if final == ord("m"):
        return all(c in b"0123456789;:" for c in body)
    if final in _CSI_CURSOR_FINALS:
        return all(c in b"0123456789;" for c in body)
    if final in b"hl" and body[:1] == b"?":
        return body[1:] in _DEC_MODES_ALLOWED
    return False


class AnsiFilter:
    """Feed raw PTY bytes, get bytes that are safe to show on an operator's terminal."""

    def __init__(self) -> None:
        self._state = _GROUND
        self._seq = bytearray()
        self._string_len = 0
        self._utf8 = bytearray()
        self._utf8_need = 0

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        i, end = 0, len(data)
        while i < end:
            if self._state == _GROUND and not self._utf8_need:
                run = _ASCII_RUN.match(data, i) or _SAFE_RUN.match(data, i)
                if run is not None:
                    out += run.group()
                    i = run.end()
                    continue
                csi = _WHOLE_CSI.match(data, i)
                if csi is not None:  # same verdict as byte by byte, without the per-byte cost
                    body = csi.group(1)
                    if len(body) <= CSI_MAX and _csi_allowed(body, csi.group(2)[0]):
                        out += csi.group()
                    i = csi.end()
                    continue
            self._step(data[i], out)
            i += 1
        return bytes(out)

    def _step(self, b: int, out: bytearray) -> None:
        state = self._state
        if state == _GROUND:
            self._ground(b, out)
        elif state in (_STRING, _STRING_ESC):
            self._string(b, out)
        elif b == ESC:
            self._state = _ESCAPE
            self._seq.clear()
        elif b in (0x18, 0x1A):  # CAN, SUB abort any sequence
            self._state = _GROUND
        elif b < 0x20 or b == 0x7F or b >= 0x80:
            # C0 inside a sequence is executed by terminals; we drop it. Non-ASCII aborts.
            if b >= 0x80:
                self._state = _GROUND
        elif state == _ESCAPE:
            self._escape(b, out)
        elif state == _ESC_INTERMEDIATE:
            if not 0x20 <= b <= 0x2F:
                self._state = _GROUND
        elif state == _CSI:
            self._csi(b, out)
        elif state == _CSI_IGNORE and 0x40 <= b <= 0x7E:
            self._state = _GROUND

    def _ground(self, b: int, out: bytearray) -> None:
        if self._utf8_need:
            if 0x80 <= b <= 0xBF and self._utf8_continuation_ok(b):
                self._utf8.append(b)
                self._utf8_need -= 1
                if not self._utf8_need:
                    if not (self._utf8[0] == 0xC2 and self._utf8[1] <= 0x9F):  # UTF-8 C1
                        out += self._utf8
                    self._utf8.clear()
                return
            out += _REPLACEMENT
            self._utf8.clear()
            self._utf8_need = 0
        if b == ESC:
            self._state = _ESCAPE
            self._seq.clear()
        elif 0x20 <= b <= 0x7E or b in _C0_ALLOWED:
            out.append(b)
        elif b < 0x80:
            return  # other C0 and DEL
        elif 0xC2 <= b <= 0xF4:
            self._utf8.append(b)
            self._utf8_need = 1 if b < 0xE0 else 2 if b < 0xF0 else 3
        else:
            out += _REPLACEMENT  # 8-bit C1 and stray/invalid bytes

    def _utf8_continuation_ok(self, b: int) -> bool:
        """Reject overlong, surrogate and > U+10FFFF forms at the second byte."""
        if len(self._utf8) != 1:
            return True
        lead = self._utf8[0]
        if lead == 0xE0:
            return b >= 0xA0
        if lead == 0xED:
            return b <= 0x9F
        if lead == 0xF0:
            return b >= 0x90
        if lead == 0xF4:
            return b <= 0x8F
        return True

    def _escape(self, b: int, out: bytearray) -> None:
        if b == ord("["):
            self._state = _CSI
        elif b in _STRING_INTRODUCERS:
            self._state = _STRING
            self._string_len = 0
        elif 0x20 <= b <= 0x2F:
            self._state = _ESC_INTERMEDIATE
        else:
            if b in _ESC_ALLOWED:
                out += bytes((ESC, b))
            self._state = _GROUND

    def _csi(self, b: int, out: bytearray) -> None:
        if 0x40 <= b <= 0x7E:
            if _csi_allowed(bytes(self._seq), b):
                out += b"\x1b[" + self._seq + bytes((b,))
            self._state = _GROUND
        elif len(self._seq) >= CSI_MAX:
            self._state = _CSI_IGNORE
        else:
            self._seq.append(b)

    def _string(self, b: int, out: bytearray) -> None:
        self._string_len += 1
        if self._state == _STRING_ESC:
            # ESC \ is ST; ESC followed by anything else ends the string and starts a new
            # escape sequence, as in a VT parser.
            self._state = _ESCAPE
            self._seq.clear()
            if b == ord("\\"):
                self._state = _GROUND
            else:
                self._step(b, out)
        elif b == ESC:
            self._state = _STRING_ESC
        elif b in (0x07, 0x18, 0x1A):  # BEL ends OSC; CAN/SUB abort
            self._state = _GROUND
        elif self._string_len > STRING_MAX:
            self._state = _GROUND


def filter_once(data: bytes) -> bytes:
    """Filter a complete buffer (tests, one-shot command output)."""
    return AnsiFilter().feed(data)
