"""``cmdop``'s pure pieces: the ssh-style escape, the one-line wording of server refusals,
the flat config file, ages for --since, and exit statuses."""

from __future__ import annotations

import pytest
from cmdop_agent.client.cli import explain, parse_when
from cmdop_agent.client.commands import exit_status
from cmdop_agent.client.settings import parse_config
from cmdop_agent.client.terminal import EscapeReader, patiently
from cmdop_agent.errors import AgentError, ConfigError, ServerError

pytestmark = pytest.mark.unit


def test_escape_detaches_only_at_the_start_of_a_line() -> None:
    reader = EscapeReader()
    assert reader.feed(b"~.") == (b"", True)  # a fresh terminal starts a line
    reader = EscapeReader()
    assert reader.feed(b"echo a~.b\r") == (b"echo a~.b\r", False)
    assert reader.feed(b"~") == (b"", False)  # held: the next key decides
    assert reader.feed(b".") == (b"", True)
    reader = EscapeReader()
    assert reader.feed(b"~~x\r~q") == (b"~x\r~q", False)  # ~~ sends one ~; ~q sends both
    reader = EscapeReader()
    assert reader.feed(b"ls\r~.") == (b"ls\r", True)  # what came before is still sent


def test_refusals_read_as_one_actionable_line() -> None:
    assert explain(ServerError(403, "forbidden", "An observer may not file_write.")) \
        == "refused: An observer may not file_write."
    assert explain(ServerError(429, "rate_limited", "Too many requests.", 17.0)) \
        == "rate limited by the control plane; try again in 17 s"
    assert "try again later" in explain(ServerError(503, "unavailable", "down"))
    assert explain(AgentError("plain")) == "plain"


def test_config_file_is_flat_key_value(tmp_path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("# mine\nserver: 'https://c.example'\nca: /x/ca.pem  # site CA\n\n"
                      "api_key: \"cmd_live_abc\"\n")
    config.chmod(0o600)
    assert parse_config(config) == {"server": "https://c.example", "ca": "/x/ca.pem",
                                    "api_key": "cmd_live_abc"}
    config.write_text("server https://c.example\n")
    with pytest.raises(ConfigError, match=r"config.yaml:1: expected one of"):
        parse_config(config)
    config.write_text("server: https://c.example\n")
    config.chmod(0o604)
    with pytest.raises(ConfigError, match="chmod 600"):
        parse_config(config)


def test_since_takes_ages_and_iso_times() -> None:
    assert parse_when("2026-11-01") == "2026-11-01T00:00:00+00:00"
    assert parse_when("2026-11-01T10:00:00+02:00") == "2026-11-01T10:00:00+02:00"
    assert parse_when("7d").endswith("+00:00")
    with pytest.raises(AgentError, match="not an ISO date/time or an age"):
        parse_when("last week")


def test_exit_status_like_a_shell() -> None:
    assert [exit_status(c) for c in (0, 1, 127, -9, None)] == [0, 1, 127, 137, 255]


def test_terminal_waits_out_the_rate_limit_but_not_other_refusals() -> None:
    answers = [ServerError(429, "rate_limited", "slow", 0.01),
               ServerError(429, "rate_limited", "slow", 0.01), "sent"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert patiently(call) == "sent" and not answers

    def refused() -> str:
        raise ServerError(403, "forbidden", "An observer may not send_input.")

    with pytest.raises(ServerError, match="403"):
        patiently(refused)
