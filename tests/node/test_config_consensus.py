"""The [consensus] config section: its defaults are the consensus' own, bad values are refused
naming key and source, and a node built from a config.toml runs with the values it sets."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
import trio

from flnode import config as config_module
from flnode.config import ConsensusSection, NodeConfig, default_config_toml, load_config
from flnode.consensus.bft.core import Timeouts
from flnode.consensus.bft.messages import MAX_SYNC_BLOCKS
from flnode.consensus.bft.service import ConsensusService, ConsensusSettings
from flnode.errors import ConfigError
from flnode.identity import NodeIdentity
from flnode.node import Node
from tests.networks import one_node_network

ETHER = 10**18


def _dataclass_defaults() -> dict[str, object]:
    """Every consensus tunable at its code default, under its config key."""
    defaults: dict[str, object] = {
        f"timeout_{f.name}_s": f.default for f in dataclasses.fields(Timeouts)
    }
    for f in dataclasses.fields(ConsensusSettings):
        if f.name != "timeouts":
            defaults[f.name] = f.default
    return defaults


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text(text)
    return tmp_path


# -- defaults ---------------------------------------------------------------------------------------


def test_keys_and_defaults_are_the_dataclasses(tmp_path: Path) -> None:
    """One key per Timeouts/ConsensusSettings field (a new field fails here), same defaults."""
    expected = _dataclass_defaults()
    assert ConsensusSection().model_dump() == expected
    assert load_config(tmp_path, env={}).consensus.model_dump() == expected
    for name, field in ConsensusSection.model_fields.items():
        assert field.description, name


def test_default_config_builds_the_default_settings(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={}).consensus.settings() == ConsensusSettings()
    assert NodeConfig().consensus.settings() == ConsensusSettings()


def test_default_toml_holds_the_section_and_round_trips(tmp_path: Path) -> None:
    text = default_config_toml()
    assert "\n[consensus]\n" in text
    assert "# Most transactions a proposed block carries." in text
    assert tomllib.loads(text)["consensus"] == _dataclass_defaults()
    cfg = load_config(_write(tmp_path, text), env={})
    assert cfg == NodeConfig()
    assert cfg.consensus.settings() == ConsensusSettings()


def test_sync_batch_bound_is_the_protocol_limit() -> None:
    assert config_module._MAX_SYNC_BLOCKS == MAX_SYNC_BLOCKS
    assert ConsensusSection(sync_batch=MAX_SYNC_BLOCKS).sync_batch == MAX_SYNC_BLOCKS


# -- values from the layers -------------------------------------------------------------------------


def test_file_env_and_flags_reach_the_settings(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "[consensus]\ntimeout_propose_s = 7.5\ntimeout_delta_s = 2\nsync_batch = 8\n"
        "max_block_interval_s = 60.0\n",
    )
    cfg = load_config(
        tmp_path,
        env={"FLNODE_CONSENSUS_MAX_BLOCK_TXS": "50", "FLNODE_CONSENSUS_TIMEOUT_DELTA_S": "0.25"},
        overrides={"consensus.initial_sync_s": 0.0},
    )
    settings = cfg.consensus.settings()
    assert settings == ConsensusSettings(
        timeouts=Timeouts(propose=7.5, delta=0.25),
        max_block_txs=50,
        max_block_interval_s=60.0,
        sync_batch=8,
        initial_sync_s=0.0,
    )
    assert settings.timeouts.propose == 7.5  # an int in TOML is a float of seconds too


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "timeout_propose_s = 0",
            "invalid setting consensus.timeout_propose_s = 0 (from {file}): "
            "Input should be greater than 0",
        ),
        ("timeout_prevote_s = -1.0", "invalid setting consensus.timeout_prevote_s = -1.0"),
        ("timeout_precommit_s = 0.0", "invalid setting consensus.timeout_precommit_s = 0.0"),
        ("timeout_delta_s = 0", "invalid setting consensus.timeout_delta_s = 0"),
        ("timeout_maximum_s = -30", "invalid setting consensus.timeout_maximum_s = -30"),
        ("timeout_credentials_s = -0.05", "invalid setting consensus.timeout_credentials_s"),
        ("timeout_rebroadcast_s = 0", "invalid setting consensus.timeout_rebroadcast_s = 0"),
        ("timeout_propose_s = inf", "invalid setting consensus.timeout_propose_s = inf"),
        ("timeout_propose_s = nan", "invalid setting consensus.timeout_propose_s = nan"),
        ("timeout_propose_s = 'soon'", "invalid setting consensus.timeout_propose_s = 'soon'"),
        (
            "max_block_txs = 0",
            "invalid setting consensus.max_block_txs = 0 (from {file}): "
            "Input should be greater than or equal to 1",
        ),
        ("max_block_txs = 1.5", "invalid setting consensus.max_block_txs = 1.5"),
        ("max_block_txs = 1000000", "invalid setting consensus.max_block_txs = 1000000"),
        ("proposal_wait_s = -0.2", "invalid setting consensus.proposal_wait_s = -0.2"),
        ("prepare_wait_s = -1", "invalid setting consensus.prepare_wait_s = -1"),
        ("max_block_interval_s = -1", "invalid setting consensus.max_block_interval_s = -1"),
        ("tx_gossip_interval_s = 0", "invalid setting consensus.tx_gossip_interval_s = 0"),
        ("sync_batch = 0", "invalid setting consensus.sync_batch = 0"),
        (
            "sync_batch = 65",
            "invalid setting consensus.sync_batch = 65 (from {file}): "
            "Input should be less than or equal to 64",
        ),
        ("sync_timeout_s = 0", "invalid setting consensus.sync_timeout_s = 0"),
        ("sync_interval_s = -5", "invalid setting consensus.sync_interval_s = -5"),
        ("behind_grace_s = -1", "invalid setting consensus.behind_grace_s = -1"),
        ("sync_peers = 0", "invalid setting consensus.sync_peers = 0"),
        ("initial_sync_s = -10", "invalid setting consensus.initial_sync_s = -10"),
        ("timeouts = 3", "unknown setting consensus.timeouts (from {file})"),
        ("timeout_commit_s = 1", "unknown setting consensus.timeout_commit_s (from {file})"),
        (
            "timeout_maximum_s = 2.0",
            "invalid [consensus] settings (from {file}): timeout_propose_s = 3.0 exceeds "
            "timeout_maximum_s = 2.0, which caps every timeout",
        ),
    ],
)
def test_bad_values_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path, f"[consensus]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert message.format(file=tmp_path / "config.toml") in str(info.value)


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"invalid setting consensus\.sync_peers = '-1' \(from FLNODE_CONSENSUS_SYNC_PEERS\)",
    ):
        load_config(tmp_path, env={"FLNODE_CONSENSUS_SYNC_PEERS": "-1"})
    with pytest.raises(ConfigError, match=r"unknown setting consensus\.propose_timeout"):
        load_config(tmp_path, env={"FLNODE_CONSENSUS_PROPOSE_TIMEOUT": "3"})


def test_bad_flag_value_names_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"consensus\.sync_timeout_s = 0 \(from command line\)"):
        load_config(tmp_path, env={}, overrides={"consensus.sync_timeout_s": 0})


def test_settings_are_frozen() -> None:
    section = ConsensusSection()
    with pytest.raises(ValueError, match="frozen"):
        section.sync_batch = 1  # type: ignore[misc]


# -- a node uses them -------------------------------------------------------------------------------


def _node_datadir(tmp_path: Path, consensus: str) -> Path:
    """A data dir made by ``init_datadir`` whose config.toml runs a ledger and sets ``consensus``."""
    datadir = tmp_path / "node"
    one_node_network(tmp_path, "cfg-net", 31339)
    (datadir / "config.toml").write_text(
        '[node]\nnetwork_id = "cfg-net"\nshutdown_timeout_s = 1.0\nroles = ["miner"]\n'
        f'[chain]\nnetwork_file = "{tmp_path / "net.toml"}"\n'
        "[api]\nenabled = false\n[metrics]\nenabled = false\n"
        f"[consensus]\n{consensus}"
    )
    return datadir


async def test_a_node_runs_with_the_configured_consensus(tmp_path: Path) -> None:
    datadir = _node_datadir(
        tmp_path,
        "timeout_propose_s = 4.5\ntimeout_rebroadcast_s = 3\nmax_block_txs = 77\n"
        "sync_peers = 5\ninitial_sync_s = 2.0\n",
    )
    config = load_config(datadir, env={})
    node = Node(config, NodeIdentity.load(datadir / "node.key"), datadir)
    consensus = node.service("consensus")
    assert isinstance(consensus, ConsensusService)
    expected = ConsensusSettings(
        timeouts=Timeouts(propose=4.5, rebroadcast=3.0),
        max_block_txs=77,
        sync_peers=5,
        initial_sync_s=2.0,
    )
    assert consensus.settings == expected
    assert consensus.proposals is not None  # the miner's hooks still arrive with the settings

    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            assert consensus.core is not None
            assert consensus.core.timeouts == expected.timeouts  # the agreement runs on them
        finally:
            node.request_stop()


def test_a_node_without_the_section_runs_the_defaults(tmp_path: Path) -> None:
    datadir = _node_datadir(tmp_path, "")
    node = Node(load_config(datadir, env={}), NodeIdentity.load(datadir / "node.key"), datadir)
    consensus = node.service("consensus")
    assert isinstance(consensus, ConsensusService)
    assert consensus.settings == ConsensusSettings()
