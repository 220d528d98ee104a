"""Config layering (defaults < file < env < flags) and validation errors that name key and source."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from flnode.config import NodeConfig, default_config_toml, load_config
from flnode.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.toml").write_text(text)
    return tmp_path


def test_defaults_without_any_layer(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={})
    assert cfg == NodeConfig()
    assert cfg.node.roles == ("device",)
    assert cfg.storage.max_blob_size == 64 * 2**20


def test_each_layer_overrides_the_one_before(tmp_path: Path) -> None:
    _write(tmp_path, '[log]\nlevel = "warning"\nformat = "json"\n[storage]\nmax_blob_size = 1000\n')
    cfg = load_config(tmp_path, env={})
    assert (cfg.log.level, cfg.log.format, cfg.storage.max_blob_size) == ("warning", "json", 1000)

    cfg = load_config(
        tmp_path, env={"FLNODE_LOG_LEVEL": "error", "FLNODE_STORAGE_MAX_BLOB_SIZE": "2000"}
    )
    assert (cfg.log.level, cfg.log.format, cfg.storage.max_blob_size) == ("error", "json", 2000)

    cfg = load_config(
        tmp_path,
        env={"FLNODE_LOG_LEVEL": "error"},
        overrides={"log.level": "debug", "log.format": None},  # None = flag not given
    )
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")


def test_env_lists_are_comma_separated(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={"FLNODE_NODE_ROLES": "miner, device"})
    assert cfg.node.roles == ("miner", "device")


def test_flag_roles_override_file(tmp_path: Path) -> None:
    _write(tmp_path, '[node]\nroles = ["edge"]\n')
    assert load_config(tmp_path, env={}).node.roles == ("edge",)
    cfg = load_config(tmp_path, env={}, overrides={"node.roles": ("miner", "manufacturer")})
    assert cfg.node.roles == ("miner", "manufacturer")


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={})
    with pytest.raises(ValueError, match="frozen"):
        cfg.log.level = "debug"  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[log]\nlevel = "loud"\n', "invalid setting log.level = 'loud' (from {file})"),
        (
            "[storage]\nmax_blob_size = -1\n",
            "invalid setting storage.max_blob_size = -1 (from {file})",
        ),
        ("[storage]\nmax_blob_size = 'big'\n", "storage.max_blob_size = 'big'"),
        ('[node]\nroles = ["pilot"]\n', "invalid setting node.roles"),
        ("[node]\nroles = []\n", "at least one role"),
        ('[node]\nroles = ["miner", "miner"]\n', "must not repeat"),
        ('[node]\nnetwork_id = "Has Spaces"\n', "node.network_id"),
        ("[log]\nlevl = 'info'\n", "unknown setting log.levl (from {file})"),
        ("[logging]\nlevel = 'info'\n", "unknown config section [logging]"),
        ("log = 3\n", "'log' must be a [log] table"),
        ("[log\nlevel=1", "not valid TOML"),
    ],
)
def test_bad_file_values_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, env={})
    assert message.format(file=tmp_path / "config.toml") in str(info.value)


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.gc_interval_s .*FLNODE_STORAGE_GC_INTERVAL_S"):
        load_config(tmp_path, env={"FLNODE_STORAGE_GC_INTERVAL_S": "soon"})


def test_unknown_env_variable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FLNODE_STORAGE_MAX_BLOB"):
        load_config(tmp_path, env={"FLNODE_STORAGE_MAX_BLOB": "1"})
    with pytest.raises(ConfigError, match="FLNODE_NOPE_X"):
        load_config(tmp_path, env={"FLNODE_NOPE_X": "1"})


def test_non_setting_env_is_ignored(tmp_path: Path) -> None:
    assert load_config(tmp_path, env={"FLNODE_DATADIR": "/x", "PATH": "/bin"}) == NodeConfig()


def test_bad_flag_value_names_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"log\.level = 'loud' \(from command line\)"):
        load_config(tmp_path, env={}, overrides={"log.level": "loud"})


def test_explicit_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path, env={}, config_file=tmp_path / "missing.toml")


def test_default_toml_parses_back_to_defaults(tmp_path: Path) -> None:
    text = default_config_toml()
    assert "# Largest blob the store accepts" in text
    assert NodeConfig.model_validate(tomllib.loads(text)) == NodeConfig()
