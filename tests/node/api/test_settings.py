"""The [api] and [metrics] settings: loopback unless explicitly allowed."""

from __future__ import annotations

import pytest

from flnode.config import load_config
from flnode.errors import ConfigError


@pytest.mark.parametrize("section", ["API", "METRICS"])
def test_binding_beyond_loopback_needs_allow_remote(section: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address; set allow_remote = true"):
        load_config(None, env={f"FLNODE_{section}_LISTEN_HOST": "0.0.0.0"})
    config = load_config(
        None,
        env={f"FLNODE_{section}_LISTEN_HOST": "0.0.0.0", f"FLNODE_{section}_ALLOW_REMOTE": "true"},
    )
    assert getattr(config, section.lower()).listen_host == "0.0.0.0"
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        load_config(None, env={f"FLNODE_{section}_LISTEN_HOST": host})


def test_ports_from_flags_and_limits() -> None:
    config = load_config(None, env={}, overrides={"api.port": 8545, "metrics.port": 9100})
    assert (config.api.port, config.metrics.port) == (8545, 9100)
    with pytest.raises(
        ConfigError, match=r"api.max_frame_bytes = '10' .*greater than or equal to 1024"
    ):
        load_config(None, env={"FLNODE_API_MAX_FRAME_BYTES": "10"})
