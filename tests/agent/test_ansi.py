"""The ANSI output filter: known terminal-escape attacks, split at every chunk boundary."""

import re

import pytest
from cmdop_agent.ansi import CSI_MAX, STRING_MAX, AnsiFilter, filter_once
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

# name -> (attack bytes, what must come out)
ATTACKS = {
    "title set": (b"a\x1b]0;pwned\x07b", b"ab"),
    "title set ST": (b"a\x1b]2;pwned\x1b\\b", b"ab"),
    "title report": (b"\x1b[21t", b""),
    "title set and report": (b"\x1b]l;rm -rf ~\x1b\\\x1b[21t\n", b"\n"),
    "icon report": (b"\x1b[20t", b""),
    "window size report": (b"\x1b[18t\x1b[14t", b""),
    "DECRQSS": (b"\x1bP$qm\x1b\\x", b"x"),
    "DECRQSS 8-bit": (b"\x90$qm\x9cx", "\ufffd$qm\ufffdx".encode()),
    "OSC 52 write": (b"\x1b]52;c;ZWNobyBwd25lZA==\x07ok", b"ok"),
    "OSC 52 read": (b"\x1b]52;c;?\x07", b""),
    "OSC 8 misleading link": (
        b"\x1b]8;;https://evil.example/\x1b\\https://bank.example\x1b]8;;\x1b\\",
        b"https://bank.example",
    ),
    "OSC 50 font query": (b"\x1b]50;?\x07", b""),
    "OSC 4 palette query": (b"\x1b]4;1;?\x07", b""),
    "APC": (b"\x1b_payload\x1b\\z", b"z"),
    "PM": (b"\x1b^payload\x1b\\z", b"z"),
    "SOS": (b"\x1bXpayload\x1b\\z", b"z"),
    "DSR cursor position": (b"\x1b[6n", b""),
    "DSR status": (b"\x1b[5n", b""),
    "DA primary": (b"\x1b[c\x1b[0c", b""),
    "DA secondary": (b"\x1b[>c", b""),
    "DA tertiary": (b"\x1b[=c", b""),
    "DECRQM": (b"\x1b[?2004$p", b""),
    "XTVERSION": (b"\x1b[>q", b""),
    "DECID": (b"\x1bZ", b""),
    "RIS": (b"\x1bc", b""),
    "mouse reporting": (b"\x1b[?1000h\x1b[?1006h\x1b[?1003h", b""),
    "focus reporting": (b"\x1b[?1004h", b""),
    "bracketed paste off": (b"\x1b[?2004l", b""),
    "C1 8-bit CSI": (b"\x9b6n", "\ufffd6n".encode()),
    "C1 8-bit OSC": (b"\x9d0;x\x07", "\ufffd0;x".encode()),
    "C1 UTF-8 CSI": ("\u009b6n".encode(), b"6n"),
    "C1 UTF-8 OSC": ("\u009d0;t\u009c".encode(), b"0;t"),
    "BEL and DEL": (b"a\x07\x7fb", b"ab"),
    "CSI with intermediate": (b"\x1b[1 q", b""),
    "charset switch": (b"\x1b(0q\x1b(B", b"q"),
    "CAN aborts": (b"\x1b]0;t\x18ok", b"ok"),
    "overlong CSI": (b"\x1b[" + b"1;" * CSI_MAX + b"m|", b"|"),
    "overlong UTF-8": (b"\xc0\xaf", "\ufffd\ufffd".encode()),
}

HARMLESS = [
    b"plain text\r\n",
    b"\x1b[1;31mred\x1b[0m \x1b[38;5;208morange\x1b[m \x1b[38;2;1;2;3mrgb\x1b[0m\n",
    b"\x1b[38:2::1:2:3mcolon form\x1b[0m",
    b"\x1b[2J\x1b[H\x1b[10;5H\x1b[K\x1b[3A\x1b[2C\x1b[1G",
    b"\x1b[?25l\x1b[?1049h full screen \x1b[?1049l\x1b[?25h",
    b"\x1b7saved\x1b8",
    "h\u00e9llo \u20ac \U0001f600 \u4e2d\u6587\tTAB\bBS\n".encode(),
]


def feed_split(data: bytes, cuts: list[int]) -> bytes:
    f = AnsiFilter()
    out, start = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out.append(f.feed(data[start:cut]))
        start = cut
    return b"".join(out)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_neutralised_at_every_split(name: str) -> None:
    attack, expected = ATTACKS[name]
    assert filter_once(attack) == expected
    for cut in range(len(attack) + 1):
        assert feed_split(attack, [cut]) == expected, cut
    assert feed_split(attack, list(range(len(attack)))) == expected  # one byte at a time


@pytest.mark.parametrize("text", HARMLESS)
def test_harmless_output_passes_unchanged(text: bytes) -> None:
    assert filter_once(text) == text
    assert feed_split(text, list(range(len(text)))) == text


def test_unterminated_string_stops_swallowing_after_cap() -> None:
    data = b"\x1b]0;" + b"x" * (STRING_MAX + 10) + b"\nvisible"
    assert filter_once(data).endswith(b"\nvisible")


FORBIDDEN = re.compile(rb"\x1b[\]P_^X]")


def assert_safe(out: bytes) -> None:
    assert not FORBIDDEN.search(out)
    text = out.decode("utf-8")  # always valid UTF-8
    assert not any(0x80 <= ord(c) <= 0x9F for c in text)
    assert all(c in "\t\n\r\b\x1b" or ord(c) >= 0x20 for c in text)
    assert "\x7f" not in text


escapey = st.lists(
    st.one_of(
        st.binary(max_size=8),
        st.sampled_from(
            [b"\x1b", b"\x1b[", b"\x1b]", b"\x1bP", b"\x1b_", b"\x1b^", b"\x1bX", b"\x9b",
             b"\x9d", b"\x9c", b"\xc2\x9b", b"\xc2", b"\x07", b"\x1b\\", b"?", b";", b"m",
             b"21t", b"6n", b"\x18", b"\xe2\x82", b"\xf0\x9f"]
        ),
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(data=escapey, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_no_dangerous_bytes_for_any_input_and_split(data: bytes, cuts: list[int]) -> None:
    out = feed_split(data, [c for c in cuts if c <= len(data)])
    assert_safe(out)
    assert out == filter_once(data)  # chunking never changes the result


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=300))
def test_arbitrary_bytes_are_safe(data: bytes, cut: int) -> None:
    out = feed_split(data, [min(cut, len(data))])
    assert_safe(out)
    assert out == filter_once(data)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(min_codepoint=0x20, blacklist_categories=("Cs",),
                                            blacklist_characters="\x7f" + "".join(
                                                chr(c) for c in range(0x80, 0xA0)))))
def test_printable_unicode_passes_unchanged(text: str) -> None:
    data = text.encode()
    assert filter_once(data) == data
