"""``cmdop connect``'s screen: a session's output reaches the user's terminal through the
agent's ANSI policy again, so a compromised machine (which can forge its sessions' output)
cannot drive the user's own terminal; what an honest agent already filtered is unchanged."""

from __future__ import annotations

import os
import threading

import pytest
from cmdop_agent.ansi import AnsiFilter
from cmdop_agent.client.terminal import Screen

pytestmark = pytest.mark.unit


def _through_screen(*chunks: bytes) -> bytes:
    """What a pipe standing for the terminal receives (read by a thread, so a write larger
    than the pipe's buffer completes)."""
    read_fd, write_fd = os.pipe()
    got = bytearray()

    def drain() -> None:
        while data := os.read(read_fd, 65536):
            got.extend(data)

    reader = threading.Thread(target=drain)
    reader.start()
    screen = Screen(write_fd)
    try:
        for chunk in chunks:
            screen.write(chunk)
    finally:
        os.close(write_fd)
        reader.join(timeout=30)
        os.close(read_fd)
    assert not reader.is_alive()
    return bytes(got)


def test_forged_output_cannot_drive_the_users_terminal() -> None:
    forged = [b"ok \x1b]52;c;cm0gLXJmIH4=\x07",  # OSC 52: write the user's clipboard
              b"\x1b[6n\x1b[c",  # cursor and device reports: the terminal would answer
              b"\x1bP$q\"p\x1b\\",  # DECRQSS, an answer-back as typed input
              b"\x1b]0;ti", b"tle\x07 done\r\n"]  # a title set split across two writes
    assert _through_screen(*forged) == b"ok  done\r\n"


def test_output_the_agent_already_filtered_passes_unchanged_and_whole() -> None:
    colours = b"\x1b[1;32mgreen\x1b[0m \x1b[2J\x1b[H\x1b[?1049h\xe2\x9c\x93 text\r\n"
    honest = AnsiFilter().feed(colours * 20_000)  # ~1 MiB, as the agent sends it
    assert _through_screen(honest[:333_333], honest[333_333:]) == honest
