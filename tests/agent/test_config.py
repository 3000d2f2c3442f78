"""agent.toml: the reconnect backoff's cap is the site's to choose, within bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from cmdop_agent.config import RECONNECT_MAX_DELAY, load_config
from cmdop_agent.errors import ConfigError

pytestmark = pytest.mark.unit


def _config(tmp_path: Path, extra: str = "") -> Path:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read by load_config\n")
    path = tmp_path / "agent.toml"
    path.write_text(f'server = "https://cp.example"\nca_file = "{ca}"\n{extra}')
    path.chmod(0o600)
    return path


def test_reconnect_max_delay_defaults_to_two_minutes(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path)).reconnect_max_delay == RECONNECT_MAX_DELAY == 120


@pytest.mark.parametrize("value", ["1", "2.5", "600"])
def test_reconnect_max_delay_is_configurable(tmp_path: Path, value: str) -> None:
    config = load_config(_config(tmp_path, f"reconnect_max_delay = {value}\n"))
    assert config.reconnect_max_delay == float(value)


@pytest.mark.parametrize("value", ["0", "0.5", "601", "true", '"60"'])
def test_reconnect_max_delay_out_of_range_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="reconnect_max_delay must be 1 to 600 seconds"):
        load_config(_config(tmp_path, f"reconnect_max_delay = {value}\n"))
